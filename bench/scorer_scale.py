"""Measure a scorer's scale (mean and std of its scores) on the embedded world, for ensembles.

An ensemble (``--scorer clip+taste:0.5``) puts each term on its own scale, ``(s - mean) / std``
(:mod:`bestshot.scoring.ensemble`); this prints the constants of :data:`bestshot.scoring.ensemble.MEASURED`.
The images are the embedded model's candidates (shipped settings, best-of-N seeds 0..N-1) for held-out world
prompts, each scored against its own prompt; the std is over all images together.

    python bench/scorer_scale.py [--prompts 40] [--n 8] [--seed 31337] \
        [--scorers embedded,embedded+regions,embedded+spatial]
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument("--scorers", default="embedded,embedded+regions,embedded+spatial")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from bestshot.generation import make_candidates, seeds_for
    from bestshot.models.loader import load_pipeline
    from bestshot.models.registry import FAMILIES
    from bestshot.models.settings import resolve_config
    from bestshot.scoring import pipeline_scorer
    from bestshot.world import heldout_prompts

    cfg = resolve_config(None, n_images=args.n, clip_min=-1.0)
    pipe = load_pipeline("embedded")
    names = args.scorers.split(",")
    scorers = {s: pipeline_scorer(s, pipe, FAMILIES["embedded"]) for s in names}
    scores: dict[str, list[float]] = {s: [] for s in names}
    for p in heldout_prompts(args.prompts, seed=args.seed):
        ims = make_candidates(pipe, None, p, "", seeds_for(0, args.n), cfg)
        for s, sc in scorers.items():
            scores[s] += sc.score(ims, p)
    print(f"{args.prompts} held-out prompts (seed {args.seed}) x {args.n} candidates, {cfg.steps_base} steps")
    print("| scorer | mean | std | within-prompt std |")
    print("|---|---|---|---|")
    for s, v in scores.items():
        a = np.asarray(v).reshape(args.prompts, args.n)
        within = float(np.sqrt(a.var(axis=1).mean()))
        print(f"| {s} | {a.mean():.4f} | {a.std():.4f} | {within:.4f} |")


if __name__ == "__main__":
    main()
