"""End-to-end `eval sweep` timing: a 2×2 guidance × steps grid, 64 samples per cell, embedded model, CPU.

The reference images are held-out scenes of the procedural world the embedded model was trained on
(``bestshot.world.heldout_scenes``), rendered at the model's native size into a folder with
``.txt`` captions, turned into a manifest with ``build_folder_manifest``. The sweep then generates every
cell, measures FID / KID / CMMD / CLIP score with the embedded CLIP image tower (not comparable with
published FID) and writes results.csv/.md, plots and the worst-CLIP contact sheet. The whole run is
timed from an empty sweep folder (target: < 10 minutes on 2 CPU cores).

    python bench/eval_sweep_bench.py                       # embedded model, 2 threads, 64 per cell
    python bench/eval_sweep_bench.py --standin             # embedded architecture, random weights
    python bench/eval_sweep_bench.py --n 8 --model DIR --scorer CLIPDIR --clip CLIPDIR   # smoke run

``--standin`` builds the embedded model's architecture (configs/embedded/*.yaml) with random weights, for
timing before the trained model exists: speed does not depend on weight values, the metrics do (they
are meaningless for a stand-in and reported only to show the pipeline ran).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import torch


def render_reference(folder: Path, n: int, size: int, seed: int) -> None:
    """n held-out world scenes as ``{i:04d}.png`` + ``{i:04d}.txt`` (the scene's prompt)."""
    from bestshot.store import atomic_write_text, save_png
    from bestshot.world import heldout_scenes, render

    for i, (scene, prompt) in enumerate(heldout_scenes(n, seed=seed)):
        save_png(folder / f"{i:04d}.png", render(scene, size))
        atomic_write_text(folder / f"{i:04d}.txt", prompt)


def build_standin(folder: Path) -> Path:
    """The embedded model's architecture, random weights, saved like the real one (model_index.json)."""
    from bestshot.models.world_pipeline import DEFAULTS, BestshotWorldPipeline
    from bestshot.store import atomic_write_json
    from bestshot.train.clip_train import ClipTrainConfig, build_clip, build_clip_tokenizer
    from bestshot.train.common import load_config
    from bestshot.train.ddpm import DDPMConfig, build_unet, sampling_scheduler

    root = Path(__file__).resolve().parents[1] / "configs" / "embedded"
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    cc = load_config(ClipTrainConfig, root / "clip.yaml")
    dc = load_config(DDPMConfig, root / "ddpm.yaml")
    clip = build_clip(cc).eval()
    pipe = BestshotWorldPipeline(
        unet=build_unet(dc, clip.config).eval(),
        scheduler=sampling_scheduler(dc),
        clip=clip,
        tokenizer=build_clip_tokenizer(cc.max_length),
        conditioning=dc.cond,
    )
    pipe.save_pretrained(folder)
    # bestshot's keys (config._DEFAULT_KEYS) next to the diffusers names of world_pipeline.DEFAULTS
    atomic_write_json(
        folder / "bestshot_defaults.json",
        {
            **DEFAULTS,
            "steps": DEFAULTS["num_inference_steps"],
            "guidance": DEFAULTS["guidance_scale"],
            "height": dc.img_size,
            "width": dc.img_size,
        },
    )
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/eval_sweep")
    ap.add_argument("--n", type=int, default=64, help="samples per cell (and reference images)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--scorer", default=None)
    ap.add_argument("--clip", default=None, help="CLIP folder for the metrics (default: the embedded CLIP)")
    ap.add_argument("--guidance", default=None, help="two values, e.g. 2,5 (default: model default ×1, ×2)")
    ap.add_argument("--steps", default=None, help="two values, e.g. 10,20 (default: model default ÷2, ×1)")
    ap.add_argument("--size", type=int, default=None, help="square size (default: the model's native size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=777, help="held-out scene seed")
    ap.add_argument("--standin", action="store_true", help="embedded architecture with random weights (timing only)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.standin:
        args.model = str(build_standin(out / "standin_model"))
        args.clip = args.clip or str(Path(args.model) / "clip")
    from bestshot.evaluate.manifest import build_folder_manifest
    from bestshot.evaluate.sweep import SweepConfig, run_sweep, to_markdown
    from bestshot.models.settings import resolve_config
    from bestshot.store import atomic_write_json

    base = resolve_config(None, model=args.model)  # the model's own defaults (bestshot_defaults.json)
    size = args.size or base.width
    guidance = (
        tuple(float(x) for x in args.guidance.split(",")) if args.guidance else (base.guidance, 2 * base.guidance)
    )
    steps = (
        tuple(int(x) for x in args.steps.split(",")) if args.steps else (max(1, base.steps_base // 2), base.steps_base)
    )

    for sub in ("real", "sweep"):  # time from scratch: only the bench's own folders are cleared
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.perf_counter()
    render_reference(out / "real", args.n, size, args.seed)
    manifest = build_folder_manifest(out / "real", out / "manifest.csv")
    t_ref = time.perf_counter() - t0
    cfg = SweepConfig(
        manifest=str(manifest),
        out=str(out / "sweep"),
        guidance=guidance,
        steps=steps,
        num=args.n,
        model=args.model,
        scorer=args.scorer,
        clip=args.clip,
        width=size,
        height=size,
        device="cpu",
    )
    res = run_sweep(cfg, progress=False, log=lambda m: print(m, flush=True))
    total = time.perf_counter() - t0
    print(to_markdown(res["rows"], res["info"]))
    report = {
        "total_s": round(total, 1),
        "reference_s": round(t_ref, 2),
        "sweep_s": res["info"]["seconds"],
        "cells": len(res["rows"]),
        "samples_per_cell": args.n,
        "size": size,
        "guidance": guidance,
        "steps": steps,
        "threads": args.threads,
        "model": args.model,
        "standin_random_weights": args.standin,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "target_s": 600,
        "rows": res["rows"],
    }
    atomic_write_json(out / "bench.json", report)
    print(
        f"eval sweep bench: {len(res['rows'])} cells x {args.n} samples at {size}px, {args.threads} threads: "
        f"{total:.1f} s total ({'under' if total < 600 else 'OVER'} the 600 s target) → {out}/bench.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
