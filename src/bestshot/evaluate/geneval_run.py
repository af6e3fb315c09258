"""`bestshot eval geneval`: generate the GenEval prompts with each method, judge them, tabulate per category.

Every method goes through :func:`bestshot.generation.generate`, the code path ``bestshot generate`` runs:

* ``plain`` — one image (seed ``s``), no ranking;
* ``best_of_n`` — ``n`` candidates (seeds ``s .. s+n-1``) ranked by the scorer, the best kept (gate off).
  Its first candidate is ``plain``'s image, so the two columns compare like with like.
* ``regions`` / ``search`` — reserved for region-steered generation and noise search; they plug in with
  :func:`register_method` and are refused with one line until then.

Per prompt ``i`` and sample ``k`` the seed is ``seed + (i * samples + k) * n``. Scores follow GenEval's
summary: per tag the % of correct images, overall the mean over the tags. Results go to
``geneval.json`` (settings, table, every image's verdict and detections) and ``geneval.csv`` (the table),
both written atomically; an interrupted run writes what it finished, marked ``interrupted``.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import EMBEDDED
from ..errors import BestshotError
from ..store import Store, atomic_write_json, atomic_write_text, ensure_writable
from .detect import DEFAULT_DETECTOR, load_detector
from .geneval import TAGS, GenevalPrompt, GenevalRules, judge_image, load_prompts

PLANNED = {
    "regions": "region-steered generation (a sub-prompt per layout box) is not available yet",
    "search": "search over initial noises is not available yet",
}


@dataclass
class GenevalConfig:
    methods: tuple[str, ...] = ("plain", "best_of_n")
    n: int = 4  # candidates of best_of_n
    samples: int = 1  # images per prompt and method (GenEval's paper: 4)
    prompts: str | None = None  # a metadata .jsonl; None = the shipped GenEval set
    tags: tuple[str, ...] = ()  # only these categories (default all)
    limit: int | None = None  # at most this many prompts per category (the first ones)
    model: str = EMBEDDED
    steps: int | None = None
    guidance: float | None = None
    scorer: str | None = None
    seed: int = 0
    device: str | None = None
    detector: str = DEFAULT_DETECTOR
    rules: GenevalRules = field(default_factory=GenevalRules)
    out: str | None = "eval_geneval"


@dataclass
class MethodContext:
    """What a method gets besides the prompt and seed: the run's settings and a store for its images."""

    cfg: GenevalConfig
    store: Store


Method = Callable[[str, int, MethodContext], tuple[Image.Image, dict[str, Any]]]


def _generate(prompt: str, seed: int, ctx: MethodContext, n: int) -> tuple[Image.Image, dict[str, Any]]:
    from ..generation import generate

    c = ctx.cfg
    rec = generate(
        prompt,
        model=c.model,
        n_images=n,
        seed_base=seed,
        steps_base=c.steps,
        guidance=c.guidance,
        scorer=c.scorer,
        device=c.device,
        gate=False,
        store=ctx.store,
        return_candidates_images=True,
    )
    seeds = [cand["seed"] for cand in rec["candidates"]]
    best = seeds.index(rec["best_seed"])
    return rec["candidate_images"][best], {
        "seed": rec["best_seed"],
        "score": rec["best_score"],
        "path": rec.get("img_path"),
    }


def _plain(prompt: str, seed: int, ctx: MethodContext) -> tuple[Image.Image, dict[str, Any]]:
    return _generate(prompt, seed, ctx, 1)


def _best_of_n(prompt: str, seed: int, ctx: MethodContext) -> tuple[Image.Image, dict[str, Any]]:
    return _generate(prompt, seed, ctx, ctx.cfg.n)


METHODS: dict[str, Method] = {"plain": _plain, "best_of_n": _best_of_n}


def register_method(name: str, fn: Method) -> None:
    """Add a generation method (``regions`` and ``search`` come this way)."""
    METHODS[name] = fn


def check_methods(methods: tuple[str, ...]) -> None:
    if not methods:
        raise BestshotError("--methods is empty — e.g. --methods plain,best_of_n")
    for m in methods:
        if m in METHODS:
            continue
        if m in PLANNED:
            raise BestshotError(f"method {m!r}: {PLANNED[m]} — use {', '.join(METHODS)}")
        raise BestshotError(f"unknown method {m!r} — choose from {', '.join(METHODS)}")


def select_prompts(cfg: GenevalConfig) -> list[GenevalPrompt]:
    bad = [t for t in cfg.tags if t not in TAGS]
    if bad:
        raise BestshotError(f"unknown GenEval tag(s) {', '.join(bad)} — choose from {', '.join(TAGS)}")
    if cfg.limit is not None and cfg.limit < 1:
        raise BestshotError(f"--limit must be >= 1 (got {cfg.limit})")
    chosen, seen = [], dict.fromkeys(TAGS, 0)
    for p in load_prompts(cfg.prompts):
        if cfg.tags and p.tag not in cfg.tags:
            continue
        if cfg.limit is None or seen[p.tag] < cfg.limit:
            seen[p.tag] += 1
            chosen.append(p)
    if not chosen:
        raise BestshotError("no GenEval prompt left after --tags/--limit")
    return chosen


def summarise(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per method: per tag ``{"n", "correct", "pct"}`` plus ``overall`` (mean of the tags' %, GenEval's)."""
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        per: dict[str, Any] = {}
        for tag in TAGS:
            got = [r["correct"] for r in rows if r["method"] == m and r["tag"] == tag]
            if got:
                per[tag] = {"n": len(got), "correct": sum(got), "pct": round(100 * sum(got) / len(got), 2)}
        pcts = [v["pct"] for v in per.values()]
        per["overall"] = {
            "n": sum(v["n"] for v in per.values()),
            "pct": round(sum(pcts) / len(pcts), 2) if pcts else None,
        }
        table[m] = per
    return table


def to_csv(table: dict[str, dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    methods = list(table)
    w.writerow(["category", *methods])
    for tag in [*TAGS, "overall"]:
        if any(tag in table[m] for m in methods):
            w.writerow([tag, *(table[m].get(tag, {}).get("pct", "") for m in methods)])
    return buf.getvalue()


def _progress(total: int, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("geneval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled
    )


def evaluate_geneval(cfg: GenevalConfig, detector: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run the evaluation (see the module docstring); ``detector`` defaults to ``load_detector(cfg.detector)``."""
    check_methods(cfg.methods)
    if cfg.n < 1 or cfg.samples < 1:
        raise BestshotError(f"--n and --samples must be >= 1 (got {cfg.n}, {cfg.samples})")
    prompts = select_prompts(cfg)
    if cfg.out:
        ensure_writable(cfg.out, "to the folder")
    detector = detector or load_detector(cfg.detector, cfg.device)  # before any generation: fail fast offline
    results: dict[str, Any] = {
        "settings": {**asdict(cfg), "detector": getattr(detector, "name", cfg.detector)},
        "n_prompts": len(prompts),
        "interrupted": False,
    }
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    total = len(prompts) * len(cfg.methods) * cfg.samples
    scratch = None if cfg.out else tempfile.TemporaryDirectory(prefix="bestshot-geneval-")  # no --out: nothing kept
    root = Path(cfg.out or scratch.name)
    stores = {m: Store(root / "images" / m, root / f"generate_{m}.jsonl") for m in cfg.methods}
    try:
        with _progress(total, progress) as bar:
            task = bar.add_task("geneval", total=total)
            for i, meta in enumerate(prompts):
                for k in range(cfg.samples):
                    seed = cfg.seed + (i * cfg.samples + k) * cfg.n
                    for m in cfg.methods:
                        image, info = METHODS[m](meta.prompt, seed, MethodContext(cfg, stores[m]))
                        verdict = judge_image(image, meta, detector, cfg.rules)
                        rows.append(
                            {
                                "index": meta.index,
                                "tag": meta.tag,
                                "prompt": meta.prompt,
                                "method": m,
                                "sample": k,
                                **info,
                                **verdict,
                            }
                        )
                        bar.advance(task)
    except KeyboardInterrupt:
        results["interrupted"] = True
    finally:
        if scratch is not None:
            scratch.cleanup()
    results["table"] = summarise(rows, cfg.methods)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["rows"] = rows
    if cfg.out:
        atomic_write_json(Path(cfg.out) / "geneval.json", results)
        atomic_write_text(Path(cfg.out) / "geneval.csv", to_csv(results["table"]))
    if results["interrupted"]:
        raise KeyboardInterrupt
    return results


def _cell(v: dict[str, Any], tag: str) -> str:
    if v.get("pct") is None:
        return ""
    return f"{v['pct']:.1f}" if tag == "overall" else f"{v['pct']:.1f} ({v['correct']}/{v['n']})"


def rich_table(results: dict[str, Any]):
    from rich.table import Table

    table = results["table"]
    methods = list(table)
    t = Table(title=f"GenEval — {results['n_prompts']} prompts, % correct images")
    t.add_column("category")
    for m in methods:
        t.add_column(m, justify="right")
    for tag in [*TAGS, "overall"]:
        if any(tag in table[m] for m in methods):
            t.add_row(tag, *(_cell(table[m].get(tag, {}), tag) for m in methods))
    return t
