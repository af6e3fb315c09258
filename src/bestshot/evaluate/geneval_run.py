"""`bestshot eval geneval`: generate the GenEval prompts with each method, judge them, tabulate per category.

Every column goes through :func:`bestshot.generation.generate`, the code path ``bestshot generate`` runs, on the
``best_of_n`` settings (the model's defaults, ``n`` candidates, the scorer, the gate off) plus its own:

* ``plain`` — one image (``n_images=1``), no ranking; its image is ``best_of_n``'s first candidate;
* ``best_of_n`` — ``n`` candidates ranked by the scorer, the best kept;
* ``regions`` — ``best_of_n`` with ``regions="auto"`` (each object drawn inside its planned box); on a prompt the
  planner cannot lay out the run is plain sampling, and the row's ``regions`` entry says so;
* ``search`` — ``best_of_n`` with ``search=True`` and the default pool (:mod:`bestshot.search`);
* ``--variant NAME=SETTINGS`` (:mod:`.variants`) — any ``ImgCfg`` settings on top of ``best_of_n``'s, one column
  each, after the methods, e.g. ``both=regions=auto,search=true``.

Other methods plug in with :func:`register_method`. Per prompt ``i`` and sample ``k`` every column starts at seed
``seed + (i * samples + k) * stride``, ``stride`` the most seeds any column draws (``n``; more with a search's pool
and branches or a variant's larger ``n_images``), so no two images share a noise. Scores follow GenEval's summary:
per tag the % of correct images, overall the mean over the tags. Each row says what the run did (its ``regions``
and ``search`` entries); a run that keeps no image (a variant that turns the gate on) counts as a miss. Results
go to ``geneval.json`` (settings, columns, table, every image's verdict and detections) and ``geneval.csv`` (the
table), both written atomically; an interrupted run (Ctrl-C, or a run that fails) writes what it finished,
marked ``interrupted`` (or with the ``error``).
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import EMBEDDED, ImgCfg
from ..errors import BestshotError
from ..store import Store, atomic_write_json, atomic_write_text, ensure_writable
from .detect import DEFAULT_DETECTOR, load_detector
from .geneval import TAGS, GenevalPrompt, GenevalRules, judge_image, load_prompts
from .variants import Variant, parse_variants


@dataclass
class GenevalConfig:
    methods: tuple[str, ...] = ("plain", "best_of_n")
    n: int = 4  # candidates of best_of_n (and of every column built on it)
    samples: int = 1  # images per prompt and method (GenEval's paper: 4)
    prompts: str | None = None  # a metadata .jsonl; None = the shipped GenEval set
    tags: tuple[str, ...] = ()  # only these categories (default all)
    limit: int | None = None  # at most this many prompts per category (the first ones)
    model: str = EMBEDDED
    steps: int | None = None
    guidance: float | None = None
    scorer: str | None = None
    scheduler: str | None = None  # every column's sampler (None: the model's)
    seed: int = 0
    device: str | None = None
    detector: str = DEFAULT_DETECTOR
    rules: GenevalRules = field(default_factory=GenevalRules)
    out: str | None = "eval_geneval"
    variants: tuple[str, ...] = ()  # NAME=SETTINGS each: a column of best_of_n's settings plus these


@dataclass
class MethodContext:
    """What a method gets besides the prompt and seed: the run's settings, a store for its images and the column's
    generation settings (``best_of_n``'s plus the method's or variant's own; ``seed_base`` is set per prompt)."""

    cfg: GenevalConfig
    store: Store
    settings: ImgCfg | None = None


Method = Callable[[str, int, MethodContext], tuple[Image.Image | None, dict[str, Any]]]  # None: no image kept


def _summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """What a run did beyond ranking: its layout (or why none) and its search, from the run record."""
    did: dict[str, Any] = {}
    if isinstance(record.get("regions"), dict):
        r = record["regions"]
        did["regions"] = (
            {"used": True, "source": r.get("source"), "objects": [o.get("phrase") for o in r.get("objects") or []]}
            if r.get("used")
            else {"used": False, "note": r.get("note")}
        )
    if isinstance(record.get("search"), dict):
        s = record["search"]
        did["search"] = {
            "pool": len(s.get("pool") or []),
            "survivors": s.get("survivors"),
            "branches": len(s.get("branches") or []),
            "cost_ratio": s.get("cost_ratio"),
        }
    return did


def _generated(prompt: str, seed: int, ctx: MethodContext) -> tuple[Image.Image | None, dict[str, Any]]:
    """One ``generate()`` run with the column's settings from ``seed``: the kept image (None when the run kept
    none) and what the row records about the run."""
    from ..generation import generate

    assert ctx.settings is not None, "a generated column needs its settings"
    cfg = replace(ctx.settings, seed_base=seed).validate()
    rec = generate(prompt, cfg=cfg, store=ctx.store, return_candidates_images=True)
    images = rec.pop("candidate_images", None) or []
    seeds = [cand["seed"] for cand in rec.get("candidates") or []]
    best = rec.get("best_seed")
    kept = images[seeds.index(best)] if rec.get("ok") and best in seeds and len(images) == len(seeds) else None
    info = {"seed": best, "score": rec.get("best_score"), "path": rec.get("img_path"), "candidates": len(seeds)}
    if kept is None:
        info["kept"] = False
        info["why"] = rec.get("reason")
    return kept, {**info, **_summary_of(rec)}


# Every built-in method: generate() with best_of_n's settings plus these ImgCfg overrides.
SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {"n_images": 1},
    "best_of_n": {},
    "regions": {"regions": "auto"},
    "search": {"search": True},
}
METHODS: dict[str, Method] = dict.fromkeys(SETTINGS, _generated)


def register_method(name: str, fn: Method, settings: dict[str, Any] | None = None) -> None:
    """Add a generation method; its context's ``settings`` are best_of_n's with ``settings`` (ImgCfg overrides)."""
    METHODS[name] = fn
    SETTINGS[name] = dict(settings or {})


def check_methods(methods: tuple[str, ...], variants: tuple[str, ...] = ()) -> None:
    if not methods and not variants:
        raise BestshotError("--methods is empty — e.g. --methods plain,best_of_n (or give a --variant)")
    for m in methods:
        if m not in METHODS:
            raise BestshotError(f"unknown method {m!r} — choose from {', '.join(METHODS)} (or give a --variant)")
    if len(set(methods)) < len(methods):
        raise BestshotError(f"--methods names a method twice ({', '.join(methods)}) — give each once")


@dataclass(frozen=True)
class Column:
    """One column of the table: a method or a variant, its run function and its generation settings."""

    name: str
    kind: str  # "method" or "variant"
    run: Method
    settings: ImgCfg
    changes: dict[str, Any]  # the ImgCfg overrides of best_of_n's settings
    text: str = ""  # a variant's settings as given


def base_settings(cfg: GenevalConfig) -> ImgCfg:
    """``best_of_n``'s settings: the model's defaults (as ``bestshot generate --model`` resolves them) with ``n``
    candidates, the run's steps / guidance / scorer / sampler / device, and the gate off."""
    from ..models.settings import resolve_config

    given = {
        "steps_base": cfg.steps,
        "guidance": cfg.guidance,
        "scorer": cfg.scorer,
        "scheduler": cfg.scheduler,
        "device": cfg.device,
    }
    return resolve_config(None, model=cfg.model, n_images=cfg.n, gate=False, **given)


def columns(cfg: GenevalConfig) -> list[Column]:
    """Every method, then every variant, checked before anything loads (one line naming a bad one)."""
    check_methods(cfg.methods, cfg.variants)
    base = base_settings(cfg)
    variants: list[Variant] = parse_variants(cfg.variants, base)
    cols = []
    for m in cfg.methods:
        own = SETTINGS.get(m, {})
        try:
            cols.append(Column(m, "method", METHODS[m], replace(base, **own).validate(), own))
        except BestshotError as e:
            raise BestshotError(f"method {m}: {e}") from None
    for v in variants:
        if v.name in cfg.methods:
            raise BestshotError(f"--variant {v.name} has the name of a method in --methods — rename the variant")
        if "seed_base" in v.overrides:
            raise BestshotError(f"--variant {v.name}: the seeds follow --seed and the prompt — drop seed_base")
        cols.append(Column(v.name, "variant", _generated, v.apply(base), v.overrides, v.text))
    return cols


def seed_stride(cols: list[Column]) -> int:
    """How many consecutive seeds one prompt's sample takes: the most any column draws."""
    return max(max(c.settings.n_images, c.settings.search_seeds, c.settings.prune_start or 0) for c in cols)


def describe(col: Column, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A column for ``geneval.json``: what it is, what it changes, and what its runs did."""
    mine = [r for r in rows if r["method"] == col.name]
    did: dict[str, Any] = {"runs": len(mine)}
    with_regions = [r["regions"] for r in mine if "regions" in r]
    if with_regions:
        did["regions_used"] = sum(bool(r.get("used")) for r in with_regions)
    searched = [r["search"] for r in mine if "search" in r]
    if searched:
        did["searched"] = len(searched)
        did["search_pool"] = max(x["pool"] for x in searched)
    kept_none = sum(r.get("kept") is False for r in mine)
    if kept_none:
        did["kept_none"] = kept_none
    return {
        "name": col.name,
        "kind": col.kind,
        "settings": col.text or ",".join(f"{k}={v}" for k, v in col.changes.items()),
        "n_images": col.settings.n_images,
        "did": did,
    }


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
    if cfg.n < 1 or cfg.samples < 1:
        raise BestshotError(f"--n and --samples must be >= 1 (got {cfg.n}, {cfg.samples})")
    cols = columns(cfg)
    prompts = select_prompts(cfg)
    if cfg.out:
        ensure_writable(cfg.out, "to the folder")
    detector = detector or load_detector(cfg.detector, cfg.device)  # before any generation: fail fast offline
    stride = seed_stride(cols)
    results: dict[str, Any] = {
        "settings": {**asdict(cfg), "detector": getattr(detector, "name", cfg.detector), "seed_stride": stride},
        "n_prompts": len(prompts),
        "interrupted": False,
    }
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    total = len(prompts) * len(cols) * cfg.samples
    scratch = None if cfg.out else tempfile.TemporaryDirectory(prefix="bestshot-geneval-")  # no --out: nothing kept
    root = Path(cfg.out or scratch.name)
    stores = {c.name: Store(root / "images" / c.name, root / f"generate_{c.name}.jsonl") for c in cols}
    failed: BestshotError | None = None
    try:
        with _progress(total, progress) as bar:
            task = bar.add_task("geneval", total=total)
            for i, meta in enumerate(prompts):
                for k in range(cfg.samples):
                    seed = cfg.seed + (i * cfg.samples + k) * stride
                    for c in cols:
                        image, info = c.run(meta.prompt, seed, MethodContext(cfg, stores[c.name], c.settings))
                        if image is None:  # the run kept no image: a miss
                            verdict = {"correct": False, "reason": f"no image kept: {info.get('why')}"}
                        else:
                            verdict = judge_image(image, meta, detector, cfg.rules)
                        rows.append(
                            {
                                "index": meta.index,
                                "tag": meta.tag,
                                "prompt": meta.prompt,
                                "method": c.name,
                                "sample": k,
                                **info,
                                **verdict,
                            }
                        )
                        bar.advance(task)
    except KeyboardInterrupt:
        results["interrupted"] = True
    except BestshotError as e:  # e.g. a sampler a search cannot branch with: keep what finished, then say why
        results["interrupted"], results["error"] = True, str(e)
        failed = e
    finally:
        if scratch is not None:
            scratch.cleanup()
    names = tuple(c.name for c in cols)
    results["columns"] = [describe(c, rows) for c in cols]
    results["table"] = summarise(rows, names)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["rows"] = rows
    if cfg.out:
        atomic_write_json(Path(cfg.out) / "geneval.json", results)
        atomic_write_text(Path(cfg.out) / "geneval.csv", to_csv(results["table"]))
    if failed is not None:
        done = f" (the finished part is in {cfg.out}/geneval.json)" if cfg.out and rows else ""
        raise BestshotError(f"{failed}{done}") from None
    if results["interrupted"]:
        raise KeyboardInterrupt
    return results


def notes(results: dict[str, Any]) -> list[str]:
    """One line per column whose runs did more than rank: layouts used (or not), searches, runs that kept none."""
    out = []
    for c in results.get("columns") or []:
        did, runs, parts = c["did"], c["did"]["runs"], []
        if "regions_used" in did:
            fell = " (the others: plain sampling, no layout)" if did["regions_used"] < runs else ""
            parts.append(f"a planned layout steered {did['regions_used']}/{runs} runs{fell}")
        if "searched" in did:
            parts.append(f"{did['searched']}/{runs} runs searched (pool {did['search_pool']})")
        if did.get("kept_none"):
            parts.append(f"{did['kept_none']}/{runs} runs kept no image (counted as misses)")
        if parts:
            out.append(f"{c['name']}: {'; '.join(parts)}")
    return out


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
    if notes(results):
        t.caption = "\n".join(notes(results))
    return t
