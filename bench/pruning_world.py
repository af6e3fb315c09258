"""Early pruning vs plain best-of-N on the embedded world, judged by the oracle.

For each held-out prompt (two objects with a relation — the hard case):
* plain best-of-N: N full generations, the scorer picks one;
* pruned: N start, ``keep`` continue after ``at`` of the steps (previews of the predicted x0 scored by
  the same CLIP), the scorer picks one of those.
Compute is counted in denoiser image-steps per kept image.

    python bench/pruning_world.py [--prompts 100] [--n 8] [--keep 2] [--at 0.3]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--objects", type=int, default=2)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--keep", type=int, default=2)
    ap.add_argument("--at", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bestshot.generation import make_candidates, pipeline_kwargs, seeds_for
    from bestshot.models.loader import load_pipeline
    from bestshot.models.settings import resolve_config
    from bestshot.pruning import cost_ratio, run_pruned
    from bestshot.scoring import scorer_from_pipeline
    from bestshot.world import heldout_prompts
    from bestshot.world.oracle import oracle

    cfg = resolve_config(None, n_images=args.n, clip_min=-1.0)
    pipe = load_pipeline("embedded")
    scorer = scorer_from_pipeline(pipe)
    prompts = heldout_prompts(args.prompts, seed=777, n_objects=args.objects)
    seeds = seeds_for(0, args.n)
    plain = pruned = 0
    t_plain = t_pruned = 0.0
    for p in prompts:
        t = time.perf_counter()
        ims = make_candidates(pipe, None, p, "", seeds, cfg)
        sc = scorer.score(ims, p)
        t_plain += time.perf_counter() - t
        plain += oracle(ims[max(range(len(sc)), key=sc.__getitem__)], p).match
        t = time.perf_counter()
        pr = run_pruned(
            pipe,
            pipeline_kwargs(pipe, p, "", seeds, cfg, None),
            seeds=seeds,
            keep=args.keep,
            at=args.at,
            score_fn=lambda x, p=p: scorer.score(x, p),
            family="embedded",
        )
        sc2 = scorer.score(pr.images, p)
        t_pruned += time.perf_counter() - t
        pruned += oracle(pr.images[max(range(len(sc2)), key=sc2.__getitem__)], p).match
    n = len(prompts)
    work_plain = args.n * cfg.steps_base
    work_pruned = cost_ratio(cfg.steps_base, args.n, args.keep, args.at) * args.keep * cfg.steps_base
    print(f"{n} held-out {args.objects}-object prompts, {cfg.steps_base} steps, guidance {cfg.guidance}")
    print("| method | oracle full match % | denoiser image-steps per kept image | wall s per prompt |")
    print("|---|---|---|---|")
    print(f"| plain best-of-{args.n} | {100 * plain / n:.1f} | {work_plain:.0f} | {t_plain / n:.2f} |")
    print(
        f"| pruned {args.n}→{args.keep} at {args.at:.0%} | {100 * pruned / n:.1f} | {work_pruned:.0f} "
        f"({1 - work_pruned / work_plain:.0%} less) | {t_pruned / n:.2f} |"
    )


if __name__ == "__main__":
    main()
