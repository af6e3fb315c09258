"""Warm best-of-8 `generate()` of several embedded-model variants, interleaved in one process (A/B).

    python bench/embedded_ab.py [--runs 4] embedded embedded+plain runs/ddim12

A variant is a model (id or exported folder), optionally with one option: ``+plain``, diffusers' plain
attention (bmm + softmax) in the UNet instead of PyTorch's SDPA, the default; ``+solo``, the kept image
re-rendered alone as generate did before the pipeline was batch-invariant (what ``exact_best`` costs on a
pipeline that is not). Every round runs each variant once, in turn,
so a machine whose speed drifts (the 2-core dev box swings by ~25 %) slows every variant alike; compare the
medians of one run of this script, never across runs. Prints a markdown row per variant.
"""

from __future__ import annotations

import argparse
import os
import runpy
import statistics
import tempfile
import time

PROMPT = "a red circle above a blue square"


def cpu_model() -> str:
    """The CPU's model name, read as bench/embedded_speed.py reads it (one definition for both benches)."""
    speed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded_speed.py")
    return runpy.run_path(speed)["cpu_model"]()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="model[+plain|+solo], e.g. embedded embedded+solo runs/ddim12")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    import bestshot.generation as generation
    from bestshot import generate
    from bestshot.models.loader import load_pipeline

    shipped_rule = generation.needs_solo_render

    work = tempfile.mkdtemp(prefix="bestshot-ab-")
    out = dict(out_dir=os.path.join(work, "images_out"), log_jsonl=os.path.join(work, "log.jsonl"))

    def run(variant: str, seed: int) -> dict:
        model, _, opt = variant.partition("+")
        if opt not in ("", "plain", "solo"):
            raise SystemExit(f"variant {variant!r}: the options are +plain and +solo")
        unet = load_pipeline(model).unet
        plain_ok = hasattr(unet, "set_attn_processor")  # diffusers' UNet; the torch-only one has SDPA only
        if opt == "plain" and not plain_ok:
            raise SystemExit(
                f"variant {variant!r}: +plain compares diffusers' attention processors, and this model loads on the "
                "torch-only UNet — run the bench with BESTSHOT_LITE=0"
            )
        if opt == "plain":
            unet.set_attn_processor(AttnProcessor())
        if opt == "solo":
            generation.needs_solo_render = lambda pipe, cfg, n: cfg.exact_best is not False and n > 1
        try:  # gate off: every run pays the whole path
            return generate(PROMPT, model=model, seed_base=seed, clip_min=-1.0, **out)
        finally:  # the cached pipeline and generate left as they were (the bench also runs inside tests)
            if plain_ok:
                unet.set_attn_processor(AttnProcessor2_0())
            generation.needs_solo_render = shipped_rule

    for v in args.variants:  # load each model and warm it up
        run(v, 0)
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    last: dict[str, dict] = {}
    for k in range(args.runs):
        for v in args.variants:
            t = time.perf_counter()
            last[v] = run(v, 100 + k)
            times[v].append(time.perf_counter() - t)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}")
    print("| variant | steps | sampler | warm best-of-8 median s | runs s | timing_s of the last run |")
    print("|---|---|---|---|---|---|")
    for v in args.variants:
        r = last[v]
        ts = {k: round(x, 2) for k, x in r["timing_s"].items() if k != "load"}
        print(
            f"| {v} | {r['settings']['steps']} | {r['settings']['sampler']} | {statistics.median(times[v]):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in times[v])} | {ts} |"
        )


if __name__ == "__main__":
    main()
