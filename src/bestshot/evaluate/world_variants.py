"""`bestshot eval world --variant NAME=SETTINGS`: the user's best-of-N path per variant, judged by the world's oracle.

Unlike the image-set comparison of :mod:`.world_eval` (one batch of candidates, ranked here), every variant runs
what ``bestshot generate`` runs: the model's defaults plus the variant's ``ImgCfg`` overrides
(:mod:`.variants`), the prompt built, the model's default scorer and quality gate, and the best-of-N core
:func:`bestshot.generation.best_of_n`, all through :func:`bestshot.generation.generate` (each variant's kept
images and log lines under ``OUT/world_variants/runs/NAME/``). The oracle judges the image the run KEEPS; a
run the gate refuses keeps none and counts as a miss (and under "gated out").

* prompts: the held-out set (``heldout_prompts``) per object count; prompt ``i`` draws seeds from
  ``seed_base + i * SEED_STRIDE`` in every variant, so variants see the same noise where they share seeds;
* timing: wall seconds around each ``generate()`` call (the model and scorer loaded once before, as a server or
  a ``--prompts-file`` run holds them), in this process;
  variants are interleaved per prompt and their order rotates from one prompt to the next, so a drift in
  the machine's load hits every variant alike;
* resumable: each variant × prompt result is one JSON file under ``OUT/world_variants/rows/`` written
  atomically, keyed by the resolved settings, the prompt and the generator's weights; a rerun skips the rows
  it finds with the same key. Ctrl-C (or ``cancel()``, or ``time_limit_s``) stops between two runs: the
  summary of what is done is written and a rerun goes on from there.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bestshot import jsonio

from ..config import EMBEDDED, ImgCfg
from ..errors import BestshotError
from ..store import atomic_write_json, ensure_writable
from .batch import progress_bar
from .variants import Variant, parse_variants
from .world_eval import MAX_OBJECTS

SEED_STRIDE = 1000  # prompt i's seeds start at seed_base + i * SEED_STRIDE (room for pools of up to 1000)
FOLDER = "world_variants"
ORDER = "interleaved per prompt, variant order rotated by one each prompt"


@dataclass
class VariantEvalConfig:
    variants: tuple[str, ...]  # NAME=SETTINGS each; the first is the baseline of the time ratios
    model: str = EMBEDDED
    n_prompts: int = 100  # per object count
    groups: tuple[int, ...] = (1, 2, 3)
    seed: int = 12345  # held-out prompt set
    base: dict[str, Any] = field(default_factory=dict)  # overrides every variant starts from (steps, guidance...)
    out: str = "eval_world"
    time_limit_s: float | None = None  # stop (resumable) after this long


@dataclass
class Prepared:
    """One variant, ready to run: its settings, its pipeline and scorer (loaded once; ``generate()`` finds the
    same pipeline in the model cache) and the store its runs write to."""

    variant: Variant
    cfg: ImgCfg
    pipe: Any
    scorer: Any
    store: Any


def base_config(cfg: VariantEvalConfig) -> ImgCfg:
    """The model's defaults (as ``bestshot generate --model MODEL`` resolves them) plus the run-wide overrides."""
    from ..models.settings import resolve_config

    return resolve_config(None, model=cfg.model, **cfg.base)


def prepare(v: Variant, base: ImgCfg, out: Path) -> Prepared:
    """Variant ``v`` loaded and checked before any run: its pipeline, its scorer and gate, and a store under
    ``out`` (``OUT/world_variants/runs/NAME``) for the images and log lines its runs keep."""
    from ..generation import load_for, pick_scorer
    from ..models.hub import require_model, require_scorer
    from ..models.registry import default_scorer, resolve_model
    from ..modes import check as check_mode
    from ..modes import read_source
    from ..scoring import resolve_gate
    from ..store import Store

    cfg = v.apply(base)
    check_mode(cfg, read_source(cfg))
    ref = resolve_model(cfg.model)
    require_model(ref)
    require_scorer(cfg.scorer or default_scorer(ref))
    pipe = load_for(cfg)
    scorer = pick_scorer(None, cfg, ref, pipe)
    resolve_gate(scorer, cfg.score_min, enabled=cfg.gate)  # a score_min outside the scorer's range fails here
    runs = out / FOLDER / "runs" / v.name
    store = Store(root=runs, log_path=runs / "log.jsonl")
    store.check_writable()
    return Prepared(v, cfg, pipe, scorer, store)


def run_one(p: Prepared, prompt: str, index: int) -> tuple[dict[str, Any], Any, float]:
    """One user run of ``prompt`` (its seeds from ``index``) through :func:`bestshot.generation.generate`, as
    ``bestshot generate`` makes it (the kept image and its log line go to ``p.store``): ``(record dict, the
    top-ranked image — kept or refused by the gate — or None, seconds of the whole call)``."""
    from ..generation import generate

    cfg = replace(p.cfg, seed_base=p.cfg.seed_base + index * SEED_STRIDE).validate()
    t = time.perf_counter()
    result = generate(prompt, cfg=cfg, scorer=p.scorer, store=p.store, return_candidates_images=True)
    seconds = time.perf_counter() - t
    images = result.pop("candidate_images", None) or []
    seeds = [c["seed"] for c in result.get("candidates") or []]
    best = result.get("best_seed")
    top = images[seeds.index(best)] if best is not None and best in seeds and len(images) == len(seeds) else None
    return result, top, seconds


def row_key(cfg: ImgCfg, prompt: str, index: int, fingerprint: str) -> str:
    """What decides a row: the variant's resolved settings (outputs aside), the prompt, its index (hence its
    seeds) and the generator's weights."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "log_jsonl")}
    text = jsonio.dumps({"cfg": settings, "prompt": prompt, "index": index, "gen": fingerprint}, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def row_path(out: Path, variant: str, n_obj: int, index: int) -> Path:
    return out / FOLDER / "rows" / variant / f"{n_obj}obj_{index:04d}.json"


def read_row(path: Path, key: str) -> dict[str, Any] | None:
    """A finished row with this key, else None (missing, unreadable, or made with other settings)."""
    import json

    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and row.get("key") == key else None


def judge(record: dict[str, Any], kept: Any, seconds: float, prompt: str) -> dict[str, Any]:
    """A row: the oracle's verdict on the kept image (a refused run: every attribute missed), and the run."""
    from ..train.candidates import ATTRS
    from ..world.oracle import oracle

    seen = oracle(kept, prompt) if kept is not None else None
    ok = bool(record.get("ok"))
    verdict = {a: bool(ok and seen is not None and getattr(seen, a)) for a in ATTRS}
    return {
        "prompt": prompt,
        "ok": ok,
        "reason": record.get("reason"),
        "verdict": verdict,
        "ungated_match": bool(seen is not None and seen.match),  # the top-ranked image, gate or not
        "oracle_detail": seen.detail if seen is not None else None,
        "seconds": round(seconds, 4),
        "n_candidates": len(record.get("candidates") or []),
        "record": record,
    }


def check(cfg: VariantEvalConfig) -> None:
    if not cfg.variants:
        raise BestshotError("give at least one --variant NAME=SETTINGS, e.g. --variant plain= --variant best16=n=16")
    if cfg.n_prompts < 1:
        raise BestshotError("--prompts must be >= 1")
    if cfg.time_limit_s is not None and not cfg.time_limit_s >= 0:
        raise BestshotError("--time-limit must be >= 0 seconds (0: run nothing, report the rows done)")
    bad = [g for g in cfg.groups if not 1 <= g <= MAX_OBJECTS]
    if not cfg.groups or bad:
        raise BestshotError(
            f"--objects values must lie in 1-{MAX_OBJECTS} (got {', '.join(map(str, bad)) or 'none'}) — "
            "e.g. --objects 1,2,3"
        )


def evaluate_variants(
    cfg: VariantEvalConfig, progress: bool = True, cancel: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Run every variant on every held-out prompt (resuming finished rows); the summary (also written to
    ``OUT/world_variants.json`` / ``.md`` / ``.png``). ``cancel()`` true, the time limit or Ctrl-C stop between two
    runs; the summary then covers the rows done (``complete: false``)."""
    from ..train.candidates import generator_fingerprint
    from ..world import heldout_prompts
    from .world_variants_report import write_report

    check(cfg)
    base = base_config(cfg)
    variants = parse_variants(cfg.variants, base)  # every variant checked before any model loads
    out = ensure_writable(cfg.out, "to the folder")
    prepared = [prepare(v, base, out) for v in variants]
    prints = {id(p.pipe): generator_fingerprint(p.pipe) for p in prepared}
    groups = {n: heldout_prompts(cfg.n_prompts, seed=cfg.seed, n_objects=n) for n in cfg.groups}
    rows: dict[tuple[str, int, int], dict[str, Any]] = {}
    total = len(prepared) * sum(len(ps) for ps in groups.values())
    t0, stopped = time.perf_counter(), None

    def stop() -> str | None:
        if cancel is not None and cancel():
            return "cancelled"
        if cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s:
            return "time limit"
        return None

    try:
        with progress_bar(progress) as bar:
            task = bar.add_task("world variants", total=total)
            for n_obj, prompts in groups.items():
                for i, prompt in enumerate(prompts):
                    turn = i % len(prepared)
                    for p in prepared[turn:] + prepared[:turn]:  # rotated: no variant always runs first
                        path = row_path(out, p.variant.name, n_obj, i)
                        key = row_key(p.cfg, prompt, i, prints[id(p.pipe)])
                        row = read_row(path, key)
                        if row is None:
                            stopped = stopped or stop()
                            if stopped:  # nothing more is run; the rows already done still count
                                continue
                            bar.update(task, description=f"{n_obj}-object · {p.variant.name}")
                            row = {"key": key, "variant": p.variant.name, "objects": n_obj, "index": i}
                            row.update(judge(*run_one(p, prompt, i), prompt))
                            atomic_write_json(path, row)
                        rows[(p.variant.name, n_obj, i)] = row
                        bar.advance(task)
    except KeyboardInterrupt:
        write_report(out, _summary(cfg, base, prepared, groups, rows, "interrupted"))
        raise
    return write_report(out, _summary(cfg, base, prepared, groups, rows, stopped))


def _summary(
    cfg: VariantEvalConfig,
    base: ImgCfg,
    prepared: Sequence[Prepared],
    groups: dict[int, list[str]],
    rows: dict[tuple[str, int, int], dict[str, Any]],
    stopped: str | None,
) -> dict[str, Any]:
    import torch

    from .world_variants_report import summarise

    total = len(prepared) * sum(len(ps) for ps in groups.values())
    return {
        "model": cfg.model,
        "prompt_seed": cfg.seed,
        "n_prompts": cfg.n_prompts,
        "objects": list(cfg.groups),
        "seed_stride": SEED_STRIDE,
        "order": ORDER,
        "complete": len(rows) == total,
        "stopped": stopped,
        "rows_done": len(rows),
        "rows_total": total,
        "base": {k: _plain(v) for k, v in cfg.base.items()},
        "size": [base.width, base.height],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(getattr(prepared[0].pipe, "device", prepared[0].cfg.device)) if prepared else None,
        },
        "variants": [
            {
                "name": p.variant.name,
                "settings": p.variant.text,
                "overrides": {k: _plain(v) for k, v in p.variant.overrides.items()},
                "n_images": p.cfg.n_images,
                "steps": p.cfg.steps_base,
                "scorer": p.scorer.name,
                "gate": p.cfg.gate,
                "score_min": p.cfg.score_min,
            }
            for p in prepared
        ],
        "groups": summarise([p.variant.name for p in prepared], groups, rows),
    }


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, bool, str, type(None))) else str(v)
