"""`bestshot eval world`: how often the embedded model draws what the prompt says, read back by the oracle.

A fixed, seeded set of held-out prompts (single objects and two objects with a relation). For each
prompt we make ``max(ns)`` candidates in one batched call, score them with the scorer, and ask the
oracle about every candidate. From that one set of images:

* ``N=1`` (random pick) — the mean match rate over all candidates (the expected rate of a random pick,
  with less variance than looking at candidate 0 alone);
* ``best-of-N`` — the oracle's verdict on the candidate the scorer ranks first among the first N;
* ``any-of-N`` (under ``ceiling``) — how often at least one of the first N is right: what a perfect ranker
  would reach, so the gap to best-of-N is the scorer's share of the misses and the rest is the generator's.

So "CLIP lifts the full-match rate by X points" compares like with like: the same images, ranked or not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestshot import jsonio

from ..config import EMBEDDED
from ..errors import BestshotError
from ..generation import seeds_for
from ..models.loader import load_pipeline
from ..models.registry import resolve_model
from ..models.settings import resolve_config
from ..scoring import pipeline_scorer
from ..store import atomic_write_json, atomic_write_text, ensure_writable
from ..train.candidates import ATTRS

MAX_OBJECTS = 3  # the embedded world's scenes hold 1 to 3 objects (sample_scene)


@dataclass
class WorldEvalConfig:
    model: str = EMBEDDED
    n_prompts: int = 200  # per group
    groups: tuple[int, ...] = (1, 2)  # number of objects per prompt group
    ns: tuple[int, ...] = (1, 4, 8)
    seed: int = 12345  # held-out prompt set
    seed_base: int = 0  # candidate seeds
    steps: int | None = None
    guidance: float | None = None
    scorer: str | None = None
    out: str | None = None  # folder for results.json / results.md
    # folder where each group's candidates and oracle verdicts are kept: a later run with the same generator,
    # seeds and steps only scores them again (e.g. to compare scorers), see bestshot.train.candidates
    cache: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _rates(verdicts: list[dict[str, bool]]) -> dict[str, float]:
    return {a: round(100.0 * sum(bool(v[a]) for v in verdicts) / max(1, len(verdicts)), 2) for a in ATTRS}


def evaluate_world(cfg: WorldEvalConfig, progress: bool = True) -> dict[str, Any]:
    from ..train.candidates import build_candidates
    from ..world import heldout_prompts

    if not cfg.ns or min(cfg.ns) < 1:
        raise BestshotError("--n values must be >= 1, e.g. --n 1,4,8")
    bad = [g for g in cfg.groups if not 1 <= g <= MAX_OBJECTS]
    if not cfg.groups or bad:
        raise BestshotError(
            f"--objects values must lie in 1-{MAX_OBJECTS} (the embedded world draws at most "
            f"{MAX_OBJECTS} objects; got {', '.join(map(str, bad)) or 'none'}) — e.g. --objects 1,2"
        )
    n_max = max(cfg.ns)
    for folder in (cfg.out, cfg.cache):  # before any model loads
        if folder:
            ensure_writable(folder, "to the folder")
    gen_cfg = resolve_config(
        None,
        model=cfg.model,
        n_images=n_max,
        seed_base=cfg.seed_base,
        steps_base=cfg.steps,
        guidance=cfg.guidance,
        gate=False,
    )
    ref = resolve_model(cfg.model)
    pipe = load_pipeline(cfg.model, dtype=gen_cfg.dtype, device=gen_cfg.device, scheduler=gen_cfg.scheduler)
    scorer = pipeline_scorer(cfg.scorer, pipe, ref.family, gen_cfg.device)
    seeds = seeds_for(gen_cfg.seed_base, n_max)

    results: dict[str, Any] = {
        "model": cfg.model,
        "scorer": scorer.name,
        "n_prompts": cfg.n_prompts,
        "ns": list(cfg.ns),
        "prompt_seed": cfg.seed,
        "steps": gen_cfg.steps_base,
        "guidance": gen_cfg.guidance,
        "size": [gen_cfg.width, gen_cfg.height],
        "groups": {},
    }
    t0 = time.perf_counter()
    gate_rows: list[tuple[float, bool]] = []  # (score, oracle match) of each prompt's best-of-n_max pick
    for n_obj in cfg.groups:
        prompts = heldout_prompts(cfg.n_prompts, seed=cfg.seed, n_objects=n_obj)
        per_n: dict[int, list[dict[str, bool]]] = {n: [] for n in cfg.ns}
        any_n: dict[int, list[dict[str, bool]]] = {n: [] for n in cfg.ns}
        random_pick: list[dict[str, bool]] = []
        cache = Path(cfg.cache) / f"candidates_{n_obj}_object.safetensors" if cfg.cache else None
        cs = build_candidates(
            pipe,
            prompts,
            seeds,
            gen_cfg,
            cache=cache,
            prompts_per_call=1,
            progress=progress,
            label=f"{n_obj}-object prompts",
        )
        for p, prompt in enumerate(prompts):
            scores = scorer.score(cs.pil(p), prompt)
            verdicts = [cs.verdict(p, k) for k in range(n_max)]
            random_pick += verdicts
            for n in cfg.ns:
                best = max(range(n), key=lambda k: scores[k])
                per_n[n].append(verdicts[best])
                any_n[n].append({a: any(v[a] for v in verdicts[:n]) for a in ATTRS})
            top = max(range(n_max), key=lambda k: scores[k])
            gate_rows.append((float(scores[top]), verdicts[top]["match"]))
        group = {"random_pick": _rates(random_pick)}
        for n in cfg.ns:
            group[f"best_of_{n}"] = _rates(per_n[n]) if n > 1 else _rates(random_pick)
        results["groups"][f"{n_obj}_object"] = group
        results.setdefault("ceiling", {})[f"{n_obj}_object"] = {
            f"any_of_{n}": _rates(any_n[n]) for n in cfg.ns if n > 1
        }
    results["quality_gate"] = gate_table(gate_rows)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["seconds_per_prompt"] = round(results["seconds"] / max(1, cfg.n_prompts * len(cfg.groups)), 3)
    if cfg.out:
        out = Path(cfg.out)
        atomic_write_json(out / "world_eval.json", results)
        atomic_write_text(out / "world_eval.md", to_markdown(results))
    return results


def gate_table(rows: Sequence[tuple[float, bool]], points: int = 9) -> dict[str, Any]:
    """How a clip_min threshold would sort the kept (best-of-N) images, judged by the oracle.

    For thresholds at quantiles of the scores: the % of oracle matches that pass and of mismatches that
    are rejected (None where there is none of that kind: JSON null, "–" in the table).
    ``suggested_clip_min`` maximises their mean (balanced accuracy), rounded to 0.01.
    """
    if not rows:
        return {"n": 0, "table": [], "suggested_clip_min": None}
    scores = sorted(s for s, _ in rows)
    n_match = sum(m for _, m in rows)
    n_miss = len(rows) - n_match

    def rates(t: float) -> tuple[float, float]:  # (% of matches kept, % of mismatches rejected) at clip_min t
        kept = sum(1 for s, m in rows if m and s >= t)
        rejected = sum(1 for s, m in rows if not m and s < t)
        return 100 * kept / max(1, n_match), 100 * rejected / max(1, n_miss)

    def at(t: float) -> dict[str, float | None]:
        kept, rejected = rates(t)
        return {
            "clip_min": round(t, 4),
            "matches_kept_pct": round(kept, 1) if n_match else None,
            "mismatches_rejected_pct": round(rejected, 1) if n_miss else None,
        }

    table = [at(scores[min(len(scores) - 1, round(q * (len(scores) - 1) / (points - 1)))]) for q in range(points)]
    best = max(sorted({round(s, 2) for s in scores}), key=lambda t: sum(rates(t)))
    return {"n": len(rows), "matches": n_match, "table": table, "suggested_clip_min": best}


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"World evaluation — model `{results['model']}`, scorer `{results['scorer']}`, "
        f"{results['n_prompts']} held-out prompts per group (seed {results['prompt_seed']}), "
        f"{results['steps']} steps, guidance {results['guidance']}, {results['size'][0]}x{results['size'][1]}",
        "",
        "| prompts | pick | full match % | shape % | colour % | count % | position % | any of N % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for gname, group in results["groups"].items():
        ceiling = results.get("ceiling", {}).get(gname, {})
        for pick, r in group.items():
            if pick == "best_of_1":
                continue
            anyn = ceiling.get(pick.replace("best_of", "any_of"), {}).get("match")
            lines.append(
                f"| {gname.replace('_', ' ')} | {pick.replace('_', ' ')} | {r['match']:.1f} | "
                f"{r['shape']:.1f} | {r['colour']:.1f} | {r['count']:.1f} | {r['position']:.1f} | "
                f"{'' if anyn is None else f'{anyn:.1f}'} |"
            )
    lines += ["", "any of N: at least one of the N candidates matches (what a perfect ranker would pick)."]
    gate = results.get("quality_gate") or {}
    if gate.get("table"):
        lines += [
            "",
            f"Quality gate on the best-of-{max(results['ns'])} picks ({gate['n']} prompts, "
            f"{gate['matches']} oracle matches); suggested clip_min {gate['suggested_clip_min']}:",
            "",
            "| clip_min | matches kept % | mismatches rejected % |",
            "|---|---|---|",
        ]
        pct = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        lines += [
            f"| {r['clip_min']:.3f} | {pct(r['matches_kept_pct'])} | {pct(r['mismatches_rejected_pct'])} |"
            for r in gate["table"]
        ]
    return "\n".join(lines) + "\n"


def dumps(results: dict[str, Any]) -> str:
    return jsonio.dumps(results, indent=2)
