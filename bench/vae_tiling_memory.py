"""Peak memory and wall time of one VAE decode with and without ``--vae-tiling`` (and ``--vae-slicing``).

The SDXL VAE architecture (diffusers' AutoencoderKL: 128/256/512/512 channels, 4 latent channels, tiles of
``--tile`` px with diffusers' 25 % overlap) with random weights — memory and time do not depend on their
values. Each case runs in its own subprocess, so its peak (``ru_maxrss`` on CPU, max allocated on CUDA) is
its own. Prints markdown rows for bench/RESULTS.md.

    python bench/vae_tiling_memory.py --size 768 --tile 512            # CPU, a couple of minutes on 2 cores
    python bench/vae_tiling_memory.py --size 4096 --device cuda --dtype float16   # the seed-001 case (GPU)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run(size: int, tile: int, mode: str, device: str, dtype: str, batch: int, threads: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    vae = (
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=tile,
        )
        .to(device, dt)
        .eval()
    )
    if "tiling" in mode:
        vae.enable_tiling()
    if "slicing" in mode:
        vae.enable_slicing()
    z = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=dt)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with torch.no_grad():
        img = vae.decode(z).sample
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(
        mode=mode,
        size=size,
        tile=tile,
        batch=batch,
        device=device,
        dtype=dtype,
        seconds=round(time.perf_counter() - t, 1),
        peak_mb=round(peak),
        out=list(img.shape),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--tile", type=int, default=512, help="tile size in pixels (SDXL's VAE config: 1024)")
    ap.add_argument("--modes", default="plain,tiling", help="comma-separated: plain, tiling, slicing, tiling+slicing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run(a.size, a.tile, a.child, a.device, a.dtype, a.batch, a.threads)))
        return
    print(
        "| decode | size | tile | batch | device | wall time | peak memory |\n|---|---|---|---|---|---|---|", flush=True
    )
    for mode in a.modes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--size",
            str(a.size),
            "--tile",
            str(a.tile),
            "--device",
            a.device,
            "--dtype",
            a.dtype,
            "--batch",
            str(a.batch),
            "--threads",
            str(a.threads),
            "--child",
            mode,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            why = p.stderr.strip().splitlines()[-1][:80]
            print(f"| {mode} | {a.size} | {a.tile} | {a.batch} | {a.device} | failed: {why} | |")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        what = "max allocated" if a.device.startswith("cuda") else "peak RSS"
        print(
            f"| {mode} | {r['size']}² | {r['tile']} | {r['batch']} | {r['device']} {r['dtype']} | {r['seconds']} s | "
            f"{r['peak_mb']} MiB {what} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
