"""Composition levers on the embedded world, measured through the path users run.

The goal: on held-out prompts judged by the world's oracle, 1 object ≥ 99 %, 2 objects ≥ 90 %, 3 objects ≥ 70 %
full match, at ≤ 2× the wall time of today's best of 8 on the same machine: each lever alone and together
against the best of 8 in the same run, with the curve of match rate against wall time.

This driver runs exactly the documented command, in this process:

    bestshot eval world --prompts P --objects 1,2,3 --variant plain= --variant best16=n_images=16 ... --out DIR

(every prompt as ``bestshot generate`` runs it, the model's defaults plus the variant's ImgCfg settings, the
default scorer and gate; the kept image judged by the oracle; variants interleaved per prompt), then prints the
table and the row to paste into bench/RESULTS.md (date, machine, command). Rows are kept in DIR: an interrupted
run (Ctrl-C, --time-limit) resumes where it stopped.

Default variants: ``plain`` (today's best of 8), ``best16`` (n_images=16, the "more of the same" control at 2×
the cost), and ``regions``, ``search``, ``both``, ``repair``: the composition levers.

    python bench/composition.py [--prompts 100] [--objects 1,2,3] [--variants plain,best16,regions,search,both]
                                [--variant NAME=SETTINGS ...] [--out bench_out/composition] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

VARIANTS = {
    "plain": "",  # the model's defaults: today's best of 8
    "best16": "n_images=16",  # more of the same at 2x the cost
    "regions": "regions=auto",  # region-steered sampling from a planned layout
    "search": "search=true,search_pool=16",  # noise search with a verifier
    "both": "regions=auto,search=true,search_pool=16",
    "repair": "repair=true",  # keep the objects the scorer reads as right in the best, repaint the rest
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()}-core {cpu}{load}"


def command(args: argparse.Namespace, variants: list[str]) -> list[str]:
    argv = ["eval", "world", "--prompts", str(args.prompts), "--objects", args.objects, "--out", args.out]
    if args.model != "embedded":
        argv += ["--model", args.model]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.prompt_seed is not None:
        argv += ["--prompt-seed", str(args.prompt_seed)]
    if args.time_limit:
        argv += ["--time-limit", str(args.time_limit)]
    for v in variants:
        argv += ["--variant", v]
    return argv


def results_row(res: dict, cmd: str, when: str, where: str) -> str:
    first = res["variants"][0]["name"]
    parts = []
    for gname, group in res["groups"].items():
        cells = []
        for name, c in group.items():
            ci = c["match_ci95"] or ["–", "–"]
            cells.append(
                f"{name} {c['match']:.1f} % [{ci[0]}–{ci[1]}] at {c['seconds_per_prompt']} s "
                f"(×{c['time_ratio']} {first}; gated out {c['gated_out']:.1f} %)"
            )
        parts.append(f"{gname.replace('_', ' ')}: " + "; ".join(cells))
    partial = "" if res["complete"] else f" (partial: {res['rows_done']}/{res['rows_total']} runs)"
    question = (
        f"Composition levers on the embedded world ({res['n_prompts']} held-out prompts per object count, oracle on "
        "the kept image; goal 1 obj ≥ 99 %, 2 ≥ 90 %, 3 ≥ 70 % at ≤ 2× best-of-8 time)"
    )
    return f"| {question} | {' — '.join(parts)}{partial} | `{cmd}` | {when}, {where} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=100, help="held-out prompts per object count")
    ap.add_argument("--objects", default="1,2,3")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"names among {', '.join(VARIANTS)}")
    ap.add_argument("--variant", action="append", default=[], help="an extra NAME=SETTINGS (repeatable)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--prompt-seed", type=int, default=None, help="seed of the held-out prompt set (default: eval's)")
    ap.add_argument("--out", default="bench_out/composition")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: single-threaded)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds; the run stops resumable after it")
    args = ap.parse_args()

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown --variants {', '.join(unknown)} — choose among {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    variants = [f"{n}={VARIANTS[n]}" for n in names] + args.variant

    import torch

    from bestshot.cli import app
    from bestshot.errors import BestshotError

    torch.set_num_threads(args.threads)
    argv = command(args, variants)
    cmd = "bestshot " + shlex.join(argv)
    print(cmd, flush=True)
    try:
        app(argv, standalone_mode=False)
    except BestshotError as e:
        levers = any(n in names for n in ("regions", "search", "both")) and "unknown setting" in str(e)
        hint = " (the levers' settings are not in this version: run --variants plain,best16 until they are)"
        print(f"error: {e}{hint if levers else ''}", file=sys.stderr)
        return 2
    res = json.loads((Path(args.out) / "world_variants.json").read_text())
    bench = "python bench/composition.py " + shlex.join(sys.argv[1:])
    print("\nbench/RESULTS.md row:\n")
    print(results_row(res, bench, time.strftime("%Y-%m-%d", time.gmtime()), machine() + f", {args.threads} thread(s)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
