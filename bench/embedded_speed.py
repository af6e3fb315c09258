"""Speed of best-of-8 on the embedded model, CPU: warm (in-process) and cold (a fresh CLI process).

    python bench/embedded_speed.py [--threads 2] [--runs 5] [--scorer embedded+spatial] [--model runs/guided8]

Targets (issue 3): warm ≤ 5 s, cold CLI ≤ 15 s on 2 CPU cores. Prints a markdown row per measurement,
including the import floor: a fresh interpreter that only imports the diffusers and transformers classes
the embedded pipeline is made of (what any cold call pays before bestshot runs a line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT = "a red circle above a blue square"
FLOOR = (
    "from diffusers import DiffusionPipeline, UNet2DConditionModel; from transformers import CLIPModel, CLIPTokenizer"
)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the architecture: the 2-core dev boxes have differed
    between runs."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--scorer", default=None, help="a scorer spec (default: the embedded model's own)")
    ap.add_argument("--model", default=None, help="a model id or folder (default: the embedded model)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bestshot import generate

    work = tempfile.mkdtemp(prefix="bestshot-speed-")
    out = dict(out_dir=os.path.join(work, "images_out"), log_jsonl=os.path.join(work, "log.jsonl"))
    extra_cli = []
    for key in ("scorer", "model"):
        if getattr(args, key):
            out[key] = getattr(args, key)
            extra_cli += [f"--{key}", getattr(args, key)]
    t = time.perf_counter()
    first = generate(PROMPT, n_images=args.n, **out)
    first_s = time.perf_counter() - t
    warm = []
    for k in range(args.runs):
        t = time.perf_counter()
        r = generate(PROMPT, n_images=args.n, seed_base=100 + k, **out)
        warm.append(time.perf_counter() - t)

    cold = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for k in range(max(1, args.runs // 2)):
        t = time.perf_counter()
        p = subprocess.run(
            [
                "bestshot",
                "generate",
                PROMPT,
                "-n",
                str(args.n),
                "--seed",
                str(200 + k),
                "--json",
                "--out",
                out["out_dir"],
                "--log",
                out["log_jsonl"],
            ]
            + extra_cli,
            capture_output=True,
            text=True,
            env=env,
        )
        cold.append(time.perf_counter() - t)
        if p.returncode not in (0, 1):
            sys.exit(f"CLI failed: {p.stderr[-500:]}")
    floor = []
    for _ in range(max(1, args.runs // 2)):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", FLOOR], check=True, env=env)
        floor.append(time.perf_counter() - t)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}")
    print(f"settings: {json.dumps(first['settings'])}, scorer {first.get('scorer')}")
    print("| measurement | median s | all runs s |\n|---|---|---|")
    print(f"| first call in a process (loads the model) | {first_s:.2f} | {first_s:.2f} |")
    runs = ", ".join(f"{x:.2f}" for x in warm)
    print(f"| warm best-of-{args.n} `generate()` | {statistics.median(warm):.2f} | {runs} |")
    print(
        f"| cold `bestshot generate` CLI, best-of-{args.n} | {statistics.median(cold):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in cold)} |"
    )
    print(f"| import floor (`{FLOOR}`) | {statistics.median(floor):.2f} | {', '.join(f'{x:.2f}' for x in floor)} |")
    print(f"last warm timing_s: {json.dumps(r['timing_s'])}")


if __name__ == "__main__":
    main()
