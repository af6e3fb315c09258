"""Wall time and peak memory of the two large-image paths of stage 3, on CPU.

1. Tiled RRDBNet (torch backend): 1024x1024 -> 4096x4096, 512 px tiles, 32 px pad. Weights are
   random (speed and memory do not depend on their values); ``--num-block`` defaults to 1 because
   the real 23-block x4plus costs ~38 TFLOP for this image (~10 min+ on 2 shared cores). Memory is
   dominated by the 4x-resolution feature maps of one tile, which do not depend on num_block.
2. Tiled refinement: 4096x4096 through ``refine_tiled`` with an identity refine_fn (1024 px tiles,
   128 px overlap, cosine) — the cost of cropping, weighting and blending alone.

Each case runs in a fresh subprocess so ``ru_maxrss`` (peak resident memory) is its own.
Prints markdown table rows; paste them into bench/RESULTS.md.

    python bench/upscale_memory.py                 # both cases
    python bench/upscale_memory.py --case esrgan --num-block 23 --size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_esrgan(size: int, num_block: int, tile: int, tile_pad: int, threads: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from bestshot.upscale.esrgan import RRDBNet, TorchUpscaler

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    up = TorchUpscaler.__new__(TorchUpscaler)  # random weights: skip the .pth round trip
    up.model = RRDBNet(num_block=num_block).eval()
    up.device, up.half, up.tile, up.tile_pad = torch.device("cpu"), False, tile, tile_pad
    up.native_scale = 4
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    base = peak_rss_mb()
    start = time.perf_counter()
    out = up.upscale(img, 4)
    return dict(
        case=f"RRDBNet x4 (num_block={num_block}, num_feat=64), tile {tile}/pad {tile_pad}",
        size=f"{size}² → {out.width}×{out.height}",
        seconds=time.perf_counter() - start,
        base_mb=base,
        peak_mb=peak_rss_mb(),
        threads=threads,
    )


def run_refine(size: int, tile: int, overlap: int) -> dict:
    import numpy as np
    from PIL import Image

    from bestshot.upscale.tiled import refine_tiled, tile_grid

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    base = peak_rss_mb()
    start = time.perf_counter()
    out = refine_tiled(img, lambda t, box: t, tile_size=tile, overlap=overlap, progress=False)
    seconds = time.perf_counter() - start
    assert np.array_equal(np.asarray(out), np.asarray(img)), "identity refinement changed the image"
    n = len(tile_grid(size, size, tile, overlap))
    return dict(
        case=f"refine_tiled identity, {n} tiles of {tile}/overlap {overlap}, cosine",
        size=f"{size}² → {out.width}×{out.height}",
        seconds=seconds,
        base_mb=base,
        peak_mb=peak_rss_mb(),
        threads=1,
    )


def row(r: dict) -> str:
    return (
        f"| {r['case']} | {r['size']} | {r['threads']} | {r['seconds']:.1f} s | "
        f"{r['base_mb']:.0f} MB | {r['peak_mb']:.0f} MB |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["all", "esrgan", "refine"], default="all")
    ap.add_argument("--size", type=int, default=None, help="input side (default 1024 esrgan, 4096 refine)")
    ap.add_argument("--num-block", type=int, default=1)
    ap.add_argument("--tile", type=int, default=None, help="default 512 esrgan, 1024 refine")
    ap.add_argument("--tile-pad", type=int, default=32)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()

    if args.case == "all":  # one subprocess per case so each peak RSS is its own
        print("| case | size | threads | wall time | RSS before | peak RSS |\n|---|---|---|---|---|---|", flush=True)
        for case in ("esrgan", "refine"):
            cmd = [
                sys.executable,
                __file__,
                "--case",
                case,
                "--num-block",
                str(args.num_block),
                "--tile-pad",
                str(args.tile_pad),
                "--overlap",
                str(args.overlap),
                "--threads",
                str(args.threads),
            ]
            res = subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True)
            print(row(json.loads(res.stdout.strip().splitlines()[-1])), flush=True)
        return
    if args.case == "esrgan":
        r = run_esrgan(args.size or 1024, args.num_block, args.tile or 512, args.tile_pad, args.threads)
    else:
        r = run_refine(args.size or 4096, args.tile or 1024, args.overlap)
    print(json.dumps(r) if args.json else row(r), flush=True)


if __name__ == "__main__":
    main()
