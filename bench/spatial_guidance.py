"""Spatial guidance settings compared on held-out two-object prompts (never eval world's: another seed).

    python bench/spatial_guidance.py [--model embedded] [--pairs 48] [--seed 999] [--n 8] \
        --setting 20:0 --setting 20:5:0.5 --setting 20:5:0.5:2 --setting dpmpp_2m@10:5:0.5

A setting is ``[scheduler@]steps:scale[:end[:every]]`` (scale 0 = unguided; scheduler: a bestshot name such
as ddim, dpmpp_2m or unipc, default ddim). Every prompt is drawn with seeds 0..n-1
and read back by the oracle. Prints, per setting, the rate of each attribute over all candidates (what a
random pick gets), any of N (what a perfect ranker could reach) and the seconds it took. Small sets are
noisy: one prompt of 48 is 2.1 points of "any of N"; check a choice on eval world's 200 prompts.
"""

from __future__ import annotations

import argparse
import time


def parse_setting(text: str) -> tuple[str, int, float, float, int]:
    sched, _, rest = text.rpartition("@")
    parts = rest.split(":")
    if not 2 <= len(parts) <= 4:
        raise SystemExit(f"--setting {text!r}: expected [scheduler@]steps:scale[:end[:every]], e.g. 20:5:0.5:2")
    steps, scale = int(parts[0]), float(parts[1])
    end = float(parts[2]) if len(parts) > 2 else 1.0
    every = int(parts[3]) if len(parts) > 3 else 1
    return sched or "ddim", steps, scale, end, every


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--pairs", type=int, default=48, help="two-object prompts")
    ap.add_argument("--seed", type=int, default=999, help="held-out prompt seed (eval world uses 12345)")
    ap.add_argument("--n", type=int, default=8, help="candidates per prompt (seeds 0..n-1)")
    ap.add_argument("--setting", action="append", required=True, help="[scheduler@]steps:scale[:end[:every]]")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = [parse_setting(s) for s in args.setting]

    import numpy as np
    import torch

    from bestshot.errors import BestshotError
    from bestshot.models.loader import load_pipeline, set_scheduler
    from bestshot.schedulers import scheduler_name
    from bestshot.train.candidates import ATTRS
    from bestshot.world import heldout_prompts
    from bestshot.world.oracle import oracle

    for sched, *_ in settings:  # a misspelt sampler stops the run before the model loads, with the choices
        try:
            scheduler_name(sched)
        except BestshotError as e:
            raise SystemExit(f"--setting: {e}") from None
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, dtype="float32", device="cpu", scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    prompts = heldout_prompts(args.pairs, seed=args.seed, n_objects=2)
    print(f"model {args.model}, {len(prompts)} two-object prompts (seed {args.seed}) x {args.n} seeds")
    print(
        "| sampler | steps | scale | end | every | "
        + " | ".join(f"{a} %" for a in ATTRS)
        + f" | any of {args.n} % | s |"
    )
    print("|" + "---|" * (len(ATTRS) + 7))
    for sched, steps, scale, end, every in settings:
        set_scheduler(pipe, sched)
        t0 = time.perf_counter()
        verdicts = []
        for p in prompts:
            images = pipe(
                [p] * args.n,
                num_inference_steps=steps,
                guidance_scale=1.0,
                generator=[torch.Generator().manual_seed(k) for k in range(args.n)],
                spatial_guidance_scale=scale,
                spatial_guidance_end=end,
                spatial_guidance_every=every,
            ).images
            verdicts.append([[bool(getattr(oracle(im, p), a)) for a in ATTRS] for im in images])
        v = np.array(verdicts)  # (prompts, n, attributes)
        rates = " | ".join(f"{100 * v[:, :, j].mean():.1f}" for j in range(len(ATTRS)))
        print(
            f"| {sched} | {steps} | {scale:g} | {end:g} | {every} | {rates} | {100 * v[:, :, 0].any(1).mean():.1f} | "
            f"{time.perf_counter() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
