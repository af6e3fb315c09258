"""Rows per second of ``bestshot eval generate --ray`` with 1, 2, ... Ray workers (issue 26).

The same code path as the command: :func:`bestshot.evaluate.batch.generate_rows` with a
:class:`~bestshot.scale.batch.RayJobCfg`, on a manifest of ``--rows`` captions (tiny placeholder "real"
images), each worker count into a fresh folder. Two rates per run:

* ``wall rows/s``: rows / wall time of the distributed part, workers' start and model load included;
* ``steady rows/s``: the sum over workers of rows / seconds busy making rows (the rate once warm).

CPU (default): ``--workers 1,2`` workers of ``--cpus-per-worker`` CPUs each on a local Ray.
GPUs: ``--gpus N`` runs 1, 2, 4, ... N workers of one GPU each (``--gpus-per-worker 0.5`` for two per GPU);
``--address auto`` joins an existing cluster instead of starting a local Ray.

    python bench/ray_scaling.py --rows 32 --steps 16 --workers 1,2
    python bench/ray_scaling.py --gpus 8 --rows 512 --model stabilityai/stable-diffusion-xl-base-1.0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = [
    "a red square on a white background",
    "a blue circle on a gray background",
    "a green triangle above a yellow star",
    "a small purple cross on a black background",
    "two orange circles next to each other",
]


def build_manifest(folder: Path, rows: int) -> Path:
    from bestshot.evaluate.manifest import build_folder_manifest

    real = folder / "real"
    real.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(rows):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(real / f"im{i:05d}.png")
        (real / f"im{i:05d}.txt").write_text(f"{CAPTIONS[i % len(CAPTIONS)]}, picture {i}")
    return build_folder_manifest(real, folder / "manifest.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--workers", default="1,2", help="worker counts to run (CPU), e.g. 1,2")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--gpus", type=int, default=0, help="GPUs to scale over: worker counts 1, 2, 4, ... N")
    ap.add_argument("--gpus-per-worker", type=float, default=1.0)
    ap.add_argument("--address", default="local", help="local (start one) or a cluster: auto, HOST:PORT")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from bestshot.evaluate.batch import BatchSettings, generate_rows
    from bestshot.scale.batch import RayJobCfg
    from bestshot.scale.cluster import connect

    if args.gpus:
        counts, k = [], 1
        while k < args.gpus * (1 / args.gpus_per_worker):
            counts.append(k)
            k *= 2
        counts.append(int(args.gpus / args.gpus_per_worker))
        gpw = args.gpus_per_worker
    else:
        counts, gpw = [int(x) for x in args.workers.split(",")], 0.0

    t = time.perf_counter()
    ray = connect(args.address, num_cpus=args.num_cpus)
    startup = time.perf_counter() - t
    res = ray.cluster_resources()
    print(f"Ray up in {startup:.1f} s: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs", flush=True)

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="ray_scaling_") as tmp:
        tmp = Path(tmp)
        manifest = build_manifest(tmp, args.rows)
        settings = BatchSettings(model=args.model, steps=args.steps)
        for n in counts:
            job = RayJobCfg(address=args.address, workers=n, gpus_per_worker=gpw, cpus_per_worker=args.cpus_per_worker)
            summary = generate_rows(manifest, tmp / f"out_{n}", settings, ray=job, progress=sys.stderr.isatty())
            summary.pop("_report", None)
            r = summary["ray"]
            steady = sum(w["rows_per_s"] or 0 for w in r["workers"])
            rows_out.append(
                {
                    "workers": n,
                    "gpus_per_worker": gpw,
                    "rows": r["made"],
                    "wall_s": r["seconds"],
                    "wall_rows_per_s": r["rows_per_s"],
                    "steady_rows_per_s": steady,
                    "per_worker": r["workers"],
                }
            )
            print(
                f"{n} worker(s): {r['made']} rows in {r['seconds']:.1f} s = {r['rows_per_s']:.2f} rows/s wall, "
                f"{steady:.2f} rows/s steady",
                flush=True,
            )
    base = rows_out[0]
    print("\n| workers | rows | wall s | wall rows/s | steady rows/s | speed-up (steady) |")
    print("|---|---|---|---|---|---|")
    for r in rows_out:
        up = r["steady_rows_per_s"] / base["steady_rows_per_s"] if base["steady_rows_per_s"] else float("nan")
        print(
            f"| {r['workers']} | {r['rows']} | {r['wall_s']:.1f} | {r['wall_rows_per_s']:.2f} | "
            f"{r['steady_rows_per_s']:.2f} | {up:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"ray_startup_s": startup, "resources": res, "runs": rows_out}, indent=2))


if __name__ == "__main__":
    main()
