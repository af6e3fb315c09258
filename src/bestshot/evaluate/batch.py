"""`bestshot eval generate`: one generated image per manifest row, resumable.

Each row ``i`` becomes ``{i:06d}.png`` (A1111 ``parameters`` + bestshot metadata chunks) with
``{i:06d}.json`` beside it (caption, seed, settings, every best-of candidate and its score, seconds).
A row is *done* when its PNG exists: the JSON is written first and the PNG last, both atomically, so an
interrupted run never leaves a half-written image that would be mistaken for a finished one. Rerunning
the same command therefore only fills the gaps.

Generation reuses the shared path: ``load_pipeline`` (cached), the best-of-N core
:func:`bestshot.generation.best_of_n` (one batched call per row, one generator per seed, ranking, exact
best) and the same scorer choice as ``generate()``. Row ``i`` uses seeds
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

from bestshot import jsonio

from ..config import EMBEDDED
from ..errors import BestshotError
from ..generation import best_of_n, seeds_for
from ..models.loader import load_pipeline
from ..models.registry import default_scorer, resolve_model
from ..models.settings import resolve_config
from ..prompts.build import blocked_terms, build_prompt
from ..record import RunRecord
from ..scale.batch import RayJobCfg, RowOutput
from ..scale.output import Output, is_uri
from ..schedulers import sampler_label
from ..scoring import clip_score_100, pipeline_scorer
from ..store import format_parameters, png_bytes, read_png_info
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


def progress_bar(enabled: bool):
    """The evaluation jobs' bar: a description, the bar, done/total and the time left; off when not enabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not enabled,
    )


def _resolved(s: BatchSettings):
    if s.best_of < 1:
        raise BestshotError(f"--best-of must be >= 1 (got {s.best_of})")
    kw = dict(
        n_images=s.best_of,
        seed_base=s.seed,
        steps_base=s.steps,
        guidance=s.guidance,
        height=s.height,
        width=s.width,
        gate=False,
        scorer=s.scorer,
        scheduler=s.scheduler,
        device=s.device,
        dtype=s.dtype,
        style_suffix="",
        negative_prompt="",
        exact_best=s.exact_best,
    )
    over = dict(s.overrides)
    model = over.pop("model", s.model)
    cfg = resolve_config(None, model=model, **kw)
    return replace(cfg, **over).validate() if over else cfg


def _check_settings(output: Output, record: dict[str, Any]) -> None:
    """Refuse to resume a folder made with different settings: skipping its rows would mix two runs."""
    data = output.read(SETTINGS_FILE)
    if data is None:
        return
    out = output.location
    try:
        old = json.loads(data.decode("utf-8")).get("settings", {})
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return
    diff = sorted(k for k in record if k in old and old[k] != record[k])
    if diff:
        shown = ", ".join(f"{k}: {old[k]!r} → {record[k]!r}" for k in diff)
        raise BestshotError(
            f"{out} holds images made with other settings ({shown}) — use a new --out folder, "
            "or delete the old images to regenerate them"
        )


def _used(cfg, settings: BatchSettings) -> dict[str, Any]:
    """The settings record of a folder (the model's defaults filled in); also in every row's JSON."""
    used = {
        "model": cfg.model,
        "steps": cfg.steps_base,
        "guidance": cfg.guidance,
        "seed": cfg.seed_base,
        "best_of": cfg.n_images,
        "width": cfg.width,
        "height": cfg.height,
        "scorer": settings.scorer,
        "scheduler": cfg.scheduler,
    }
    used.update({k: getattr(cfg, k) for k in settings.overrides if k not in used})
    return used


def _row_seeds(cfg, row_id: int) -> list[int]:
    return seeds_for(row_seed(cfg.seed_base, row_id, cfg.n_images), cfg.n_images)


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def row_done(output: Output, row_id: int, seeds: list[int]) -> bool:
    """Row ``row_id`` is finished: its PNG opens, ends whole (the IEND chunk), its embedded metadata names this
    row and one of its seeds, and its JSON reads. A truncated, foreign or corrupt file is not done (made
    again). Reads the PNG's head and last bytes only, not its pixels: cheap on 30k-row folders."""
    from PIL import Image

    f = output.open(image_name(row_id))
    if f is None:
        return False
    try:
        with f:
            f.seek(-len(_PNG_END), 2)
            if f.read() != _PNG_END:
                return False
            f.seek(0)
            with Image.open(f) as im:
                meta = read_png_info(im).get("bestshot") or {}
        side = json.loads(output.read(image_name(row_id).replace(".png", ".json")) or b"null")
    except Exception:  # noqa: BLE001 - any unreadable file means "not done"
        return False
    return (
        isinstance(side, dict)
        and meta.get("row_id") == row_id
        and meta.get("seed") in seeds
        and side.get("row_id") == row_id
    )


class RowMaker:
    """Makes one row's image and metadata: the pipeline and scorer are loaded once (one per Ray worker)."""

    def __init__(self, settings: BatchSettings):
        self.settings = settings
        self.cfg = cfg = _resolved(settings)
        self.used = _used(cfg, settings)
        ref = resolve_model(cfg.model)
        from ..models.hub import require_model, require_scorer

        require_model(ref)
        # best of 1 ranks nothing: no scorer is loaded unless one is asked for (--scorer)
        spec = settings.scorer or (default_scorer(ref) if settings.best_of > 1 else None)
        if spec is not None:
            require_scorer(spec)  # an uncached hub scorer: fail before loading
        self.pipe = load_pipeline(
            cfg.model, dtype=cfg.dtype, device=cfg.device, memory=cfg.memory, scheduler=cfg.scheduler
        )
        self.scorer = pipeline_scorer(spec, self.pipe, ref.family, cfg.device) if spec is not None else None
        self.sampler = sampler_label(self.pipe.scheduler)

    def blocked(self, row: Row) -> list[str]:
        return blocked_terms(build_prompt(row.caption).sd_prompt, self.cfg.blocklist)

    def make(self, row: Row) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """``(meta, files)``: the row's JSON record and its files (JSON first, the PNG — "done" — last)."""
        cfg, used, pipe, scorer = self.cfg, self.used, self.pipe, self.scorer
        built = build_prompt(row.caption)
        t = time.perf_counter()
        row_cfg = replace(cfg, seed_base=row_seed(cfg.seed_base, row.row_id, cfg.n_images))
        record = RunRecord.of(row_cfg, built)
        if scorer is not None:
            record.clip_prompt, _ = scorer.truncate(built.clip_prompt)
        images = best_of_n(pipe, row_cfg, built, scorer, record)  # the shared core; gate off: the best-scored
        seeds = [c.seed for c in record.candidates]
        scores = [c.score for c in record.candidates]
        best = record.best
        rnd = lambda x, k=6: None if x is None else round(x, k)  # noqa: E731
        score100 = lambda x: None if x is None else round(clip_score_100(x), 4)  # noqa: E731
        name = scorer.name if scorer is not None else None
        seconds = round(time.perf_counter() - t, 4)
        meta = {
            **{k: v for k, v in used.items() if k not in ("seed", "scorer")},
            "row_id": row.row_id,
            "image_id": row.image_id,
            "caption": row.caption,
            "real_image": str(row.image_path),
            "seed": seeds[best],
            "clip": rnd(scores[best]),
            "clip_score": score100(scores[best]),
            "scorer": name,
            "candidates": [{"seed": s, "clip": rnd(c), "clip_score": score100(c)} for s, c in zip(seeds, scores)],
            "sampler": self.sampler,
            "seconds": seconds,
        }
        params = format_parameters(
            built.sd_prompt,
            None,
            steps=cfg.steps_base,
            sampler=self.sampler,
            cfg_scale=cfg.guidance,
            seed=seeds[best],
            width=cfg.width,
            height=cfg.height,
            model=cfg.model,
            extra={
                "Best of": cfg.n_images,
                **({} if scorer is None else {"CLIP score": f"{scores[best]:.4f}", "Scorer": name}),
            },
        )
        file = image_name(row.row_id)
        return meta, [
            (file.replace(".png", ".json"), json_bytes(meta)),
            (file, png_bytes(images[best], parameters=params, metadata=meta)),
        ]


def json_bytes(obj: Any) -> bytes:
    """The bytes :func:`bestshot.store.atomic_write_json` writes."""
    return (jsonio.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _row_dict(row: Row) -> dict[str, Any]:
    return {
        "key": row.row_id,
        "row_id": row.row_id,
        "image_path": str(row.image_path),
        "caption": row.caption,
        "image_id": row.image_id,
    }


def ray_row_maker(settings: BatchSettings, output: Output):
    """The per-row function of a Ray worker (``functools.partial(ray_row_maker, settings)`` is the factory):
    the same :class:`RowMaker`; a row found done (a retried row whose first attempt had written it) is
    reported, not made again."""
    maker = RowMaker(settings)

    def make(d: dict[str, Any]) -> RowOutput:
        row = Row(int(d["row_id"]), Path(d["image_path"]), d["caption"], d["image_id"])
        if row_done(output, row.row_id, _row_seeds(maker.cfg, row.row_id)):
            return RowOutput({"row_id": row.row_id, "done": True}, skipped=True)
        hits = maker.blocked(row)
        if hits:
            return RowOutput({"row_id": row.row_id, "blocked": hits})
        meta, files = maker.make(row)
        return RowOutput({"row_id": row.row_id, "meta": meta}, files)

    return make


def generate_rows(
    manifest: str | Path,
    out_dir: str | Path,
    settings: BatchSettings,
    num: int | None = None,
    progress: bool = True,
    ray: RayJobCfg | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Generate the first ``num`` usable rows of ``manifest`` into ``out_dir``; skip rows already done.

    Returns a summary: rows considered, generated now, skipped (already done), seconds of generation
    and the settings actually used (the model's defaults filled in). With ``ray`` the rows are made by
    Ray workers (:mod:`bestshot.scale.batch`) with the same :class:`RowMaker`, and ``out_dir`` may be a
    URI (``s3://bucket/folder``); the summary then has a ``ray`` part (per-worker throughput).
    """
    if num is not None and num < 1:
        raise BestshotError(f"--num must be >= 1 (got {num})")
    if ray is None and is_uri(str(out_dir)):
        raise BestshotError(f"--out {out_dir}: a URI needs --ray (its workers write there) — or give a folder")
    if ray is not None:
        ray.validate()
    rows: list[Row] = read_manifest(manifest)  # missing / corrupt rows: warned and skipped there
    if not rows:
        raise BestshotError(f"no usable row in {manifest} — every image is missing or corrupt")
    rows = rows[:num] if num else rows
    cfg = _resolved(settings)
    output = Output(out_dir)
    out = out_dir  # as given (the Output holds it absolute, for Ray workers in other directories)
    used = _used(cfg, settings)
    output.prepare()  # before any model loads
    _check_settings(output, used)
    todo = [r for r in rows if not row_done(output, r.row_id, _row_seeds(cfg, r.row_id))]
    summary: dict[str, Any] = {
        "manifest": str(manifest),
        "out": str(out),
        "rows": len(rows),
        "generated": 0,
        "skipped": len(rows) - len(todo),
        "blocked": [],
        "seconds": 0.0,
        "seconds_per_image": None,
        "settings": used,
    }
    if not todo:
        return summary
    if ray is not None:
        return _generate_on_ray(manifest, output, settings, used, todo, summary, ray, progress, console)

    maker = RowMaker(settings)
    output.write(
        SETTINGS_FILE,
        json_bytes(
            {
                "manifest": str(manifest),
                "settings": used,
                "sampler": maker.sampler,
                "scorer_name": maker.scorer.name if maker.scorer else None,
            }
        ),
    )
    t_all = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"generating → {out}", total=len(todo))
        for row in todo:
            hits = maker.blocked(row)
            if hits:
                summary["blocked"].append(row.row_id)
                warnings.warn(f"row {row.row_id} skipped: its caption has blocked term(s) {', '.join(hits)}")
                bar.advance(task)
                continue
            _, files = maker.make(row)
            for name, data in files:  # the JSON first, the PNG ("done") last, each atomically
                output.write(name, data)
            summary["generated"] += 1
            bar.advance(task)
    summary["seconds"] = round(time.perf_counter() - t_all, 3)
    summary["seconds_per_image"] = round(summary["seconds"] / max(1, summary["generated"]), 4)
    return summary


def _generate_on_ray(
    manifest,
    output: Output,
    settings: BatchSettings,
    used: dict[str, Any],
    todo: list[Row],
    summary: dict[str, Any],
    ray: RayJobCfg,
    progress: bool,
    console: Any,
) -> dict[str, Any]:
    import functools

    from ..scale.batch import report_dict, run_rows

    wrote_settings = []

    def on_result(res: dict[str, Any]) -> None:
        meta = res.get("meta")
        if meta and not wrote_settings:  # the first image: the workers' sampler and scorer are known
            output.write(
                SETTINGS_FILE,
                json_bytes(
                    {
                        "manifest": str(manifest),
                        "settings": used,
                        "sampler": meta["sampler"],
                        "scorer_name": meta["scorer"],
                    }
                ),
            )
            wrote_settings.append(True)

    journal = output.local / "ray_journal" if output.local is not None else None
    report = run_rows(
        [_row_dict(r) for r in todo],
        functools.partial(ray_row_maker, settings),
        ray,
        output=output,
        title=f"generating → {output.location}",
        on_result=on_result,
        progress=progress,
        console=console,
        journal=journal,
    )
    for res in report.results:  # by row, as the single-process run warns
        if res.get("blocked"):
            summary["blocked"].append(res["row_id"])
            warnings.warn(f"row {res['row_id']} skipped: its caption has blocked term(s) {', '.join(res['blocked'])}")
    summary["generated"] = sum(1 for r in report.results if r.get("meta"))
    summary["skipped"] += sum(1 for r in report.results if r.get("done"))
    summary["seconds"] = report.seconds
    summary["seconds_per_image"] = round(report.seconds / max(1, summary["generated"]), 4)
    summary["ray"] = report_dict(report)
    summary["_report"] = report
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
