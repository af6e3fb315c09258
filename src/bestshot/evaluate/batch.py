"""`bestshot eval generate`: one generated image per manifest row, resumable.

Each row ``i`` becomes ``{i:06d}.png`` (A1111 ``parameters`` + bestshot metadata chunks) with
``{i:06d}.json`` beside it (caption, seed, settings, every best-of candidate and its score, seconds).
A row is *done* when its PNG exists: the JSON is written first and the PNG last, both atomically, so an
interrupted run never leaves a half-written image that would be mistaken for a finished one. Rerunning
the same command therefore only fills the gaps.

Generation reuses the shared path: ``load_pipeline`` (cached), ``make_candidates`` (one batched call
per row, one generator per seed) and the same scorer choice as ``generate()``. Row ``i`` uses seeds
``seed + i*best_of ... seed + i*best_of + best_of - 1``, so a row's image does not depend on ``--num``,
on which rows were skipped, or on resuming.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import EMBEDDED
from ..models.settings import resolve_config
from ..errors import BestshotError
from ..generation import make_candidates, needs_solo_render, seeds_for
from ..models.loader import load_pipeline
from ..models.registry import resolve_model, sampler_label
from ..prompts.build import blocked_terms, build_prompt
from ..scoring import clip_score_100, pipeline_scorer
from ..store import atomic_write_json, ensure_writable, format_parameters, save_png
from .manifest import Row, read_manifest

SETTINGS_FILE = "eval_generate.json"


@dataclass
class BatchSettings:
    """What decides the images of an ``eval generate`` folder (``None``: the model's own default)."""

    model: str = EMBEDDED
    steps: int | None = None
    guidance: float | None = None
    seed: int = 42
    best_of: int = 1
    width: int | None = None
    height: int | None = None
    scorer: str | None = None
    scheduler: str | None = None
    device: str | None = None
    dtype: str = "auto"
    exact_best: bool | None = None  # None: generate's auto rule (re-render the kept image off CUDA only)
    # any other ImgCfg field → value (a sweep axis, e.g. {"refiner_split": 0.7}); applied last
    overrides: dict[str, Any] = field(default_factory=dict)


def image_name(row_id: int) -> str:
    return f"{row_id:06d}.png"


def row_seed(seed: int, row_id: int, best_of: int) -> int:
    return seed + row_id * best_of


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True, disable=not enabled)


def _resolved(s: BatchSettings):
    if s.best_of < 1:
        raise BestshotError(f"--best-of must be >= 1 (got {s.best_of})")
    kw = dict(n_images=s.best_of, seed_base=s.seed, steps_base=s.steps, guidance=s.guidance, height=s.height,
              width=s.width, clip_min=-1.0, scorer=s.scorer, scheduler=s.scheduler, device=s.device, dtype=s.dtype,
              style_suffix="", negative_prompt="", exact_best=s.exact_best)
    over = dict(s.overrides)
    model = over.pop("model", s.model)
    cfg = resolve_config(None, model=model, **kw)
    return replace(cfg, **over).validate() if over else cfg


def _check_settings(out: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a folder made with different settings: skipping its rows would mix two runs."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, json.JSONDecodeError):
        return
    diff = sorted(k for k in record if k in old and old[k] != record[k])
    if diff:
        shown = ", ".join(f"{k}: {old[k]!r} → {record[k]!r}" for k in diff)
        raise BestshotError(f"{out} holds images made with other settings ({shown}) — use a new --out folder, "
                            "or delete the old images to regenerate them")


def generate_rows(manifest: str | Path, out_dir: str | Path, settings: BatchSettings, num: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Generate the first ``num`` usable rows of ``manifest`` into ``out_dir``; skip rows already done.

    Returns a summary: rows considered, generated now, skipped (already done), seconds of generation
    and the settings actually used (the model's defaults filled in).
    """
    if num is not None and num < 1:
        raise BestshotError(f"--num must be >= 1 (got {num})")
    rows: list[Row] = read_manifest(manifest)  # missing / corrupt rows: warned and skipped there
    if not rows:
        raise BestshotError(f"no usable row in {manifest} — every image is missing or corrupt")
    rows = rows[:num] if num else rows
    cfg = _resolved(settings)
    out = Path(out_dir)
    used = {"model": cfg.model, "steps": cfg.steps_base, "guidance": cfg.guidance, "seed": cfg.seed_base,
            "best_of": cfg.n_images, "width": cfg.width, "height": cfg.height, "scorer": settings.scorer,
            "scheduler": cfg.scheduler}
    used.update({k: getattr(cfg, k) for k in settings.overrides if k not in used})
    ensure_writable(out, "to the output folder")  # before any model loads
    _check_settings(out, used)
    todo = [r for r in rows if not (out / image_name(r.row_id)).is_file()]
    summary: dict[str, Any] = {"manifest": str(manifest), "out": str(out), "rows": len(rows), "generated": 0,
                               "skipped": len(rows) - len(todo), "blocked": [], "seconds": 0.0, "seconds_per_image": None,
                               "settings": used}
    if not todo:
        return summary

    ref = resolve_model(cfg.model)
    from ..models.hub import require_model, require_scorer

    require_model(ref)
    require_scorer(settings.scorer or ref.family.default_scorer)  # an uncached hub scorer: fail before loading
    pipe = load_pipeline(cfg.model, dtype=cfg.dtype, device=cfg.device, memory=cfg.memory, scheduler=cfg.scheduler)
    scorer = pipeline_scorer(settings.scorer, pipe, ref.family, cfg.device)
    sampler = sampler_label(pipe.scheduler)
    atomic_write_json(out / SETTINGS_FILE, {"manifest": str(manifest), "settings": used, "sampler": sampler,
                                            "scorer_name": scorer.name})

    t_all = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task(f"generating → {out}", total=len(todo))
        for row in todo:
            built = build_prompt(row.caption)
            hits = blocked_terms(built.sd_prompt, cfg.blocklist)
            if hits:
                summary["blocked"].append(row.row_id)
                warnings.warn(f"row {row.row_id} skipped: its caption has blocked term(s) {', '.join(hits)}")
                bar.advance(task)
                continue
            t = time.perf_counter()
            seeds = seeds_for(row_seed(cfg.seed_base, row.row_id, cfg.n_images), cfg.n_images)
            images = make_candidates(pipe, None, built.sd_prompt, "", seeds, cfg)
            clip_prompt, _ = scorer.truncate(built.clip_prompt)
            scores = [float(x) for x in scorer.score(images, clip_prompt)]
            best = max(range(len(seeds)), key=lambda k: scores[k])
            if needs_solo_render(pipe, cfg, len(seeds)):  # the kept image reproducible from its seed alone
                images[best] = make_candidates(pipe, None, built.sd_prompt, "", [seeds[best]], cfg)[0]
                scores[best] = float(scorer.score([images[best]], clip_prompt)[0])
            seconds = round(time.perf_counter() - t, 4)
            meta = {**{k: v for k, v in used.items() if k not in ("seed", "scorer")},
                    "row_id": row.row_id, "image_id": row.image_id, "caption": row.caption,
                    "real_image": str(row.image_path), "seed": seeds[best], "clip": round(scores[best], 6),
                    "clip_score": round(clip_score_100(scores[best]), 4), "scorer": scorer.name,
                    "candidates": [{"seed": s, "clip": round(c, 6), "clip_score": round(clip_score_100(c), 4)}
                                   for s, c in zip(seeds, scores)],
                    "sampler": sampler, "seconds": seconds}
            params = format_parameters(built.sd_prompt, None, steps=cfg.steps_base, sampler=sampler,
                                       cfg_scale=cfg.guidance, seed=seeds[best], width=cfg.width, height=cfg.height,
                                       model=cfg.model, extra={"CLIP score": f"{scores[best]:.4f}",
                                                               "Scorer": scorer.name, "Best of": cfg.n_images})
            atomic_write_json(out / image_name(row.row_id).replace(".png", ".json"), meta)
            save_png(out / image_name(row.row_id), images[best], parameters=params, metadata=meta)  # last: "done"
            summary["generated"] += 1
            bar.advance(task)
    summary["seconds"] = round(time.perf_counter() - t_all, 3)
    summary["seconds_per_image"] = round(summary["seconds"] / max(1, summary["generated"]), 4)
    return summary


def read_outputs(folder: str | Path) -> list[dict[str, Any]]:
    """The metadata of every finished row in an ``eval generate`` folder (PNG present), row order,
    with ``path`` added. Rows whose JSON is missing or unreadable are warned about and left out."""
    folder = Path(folder)
    out, bad = [], []
    for png in sorted(folder.glob("[0-9]*.png")):
        side = png.with_suffix(".json")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            bad.append(png.name)
            continue
        out.append({**meta, "path": str(png)})
    if bad:
        warnings.warn(f"generated images without readable metadata in {folder} ({len(bad)}): {', '.join(bad[:10])}")
    return out


def captions_for(images: list[Path], captions_manifest: str | Path | None = None) -> list[str] | None:
    """Captions of generated images named ``{row_id:06d}.png``: from ``captions_manifest`` by row id,
    else from the JSON beside each image. None when any image has no caption."""
    by_row: dict[int, str] = {}
    if captions_manifest is not None:
        by_row = {r.row_id: r.caption for r in read_manifest(captions_manifest, check_images=False)}
    caps = []
    for p in images:
        p = Path(p)
        cap = None
        if captions_manifest is not None:
            cap = by_row.get(int(p.stem)) if p.stem.isdigit() else None
        else:
            try:
                cap = json.loads(p.with_suffix(".json").read_text(encoding="utf-8")).get("caption")
            except (OSError, json.JSONDecodeError, AttributeError):
                cap = None
        if not cap:
            return None
        caps.append(cap)
    return caps


__all__ = ["BatchSettings", "generate_rows", "read_outputs", "captions_for", "image_name", "row_seed"]
