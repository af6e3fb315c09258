"""Cold start of the README's main command: `bestshot generate "a red circle above a blue square"`.

    python bench/cold_start.py [--reps 5] [--warm-reps 5] [--before-src DIR] [--json-out FILE] [-- EXTRA GENERATE ARGS]

Cold: a new process per run (interpreter start, imports, model load, generation, the saved PNG), run in
a fresh working folder exactly as the README types it (its ``images_out/`` and ``images_log.jsonl`` land
there). Each run's wall time, user+sys CPU time (the children's ``os.times``) and its own ``timing_s`` (from the log
line) are kept; ``startup`` is wall minus the run's generation, scoring and saving (``timing_s.total``
counts from the call of ``generate``), i.e. what the process spends before ``generate`` plus the load.
On a busy shared box user+sys and the import breakdown are steadier than wall time.

Warm: the same command (extra arguments included) run again in one process (model cached), median of\n``--warm-reps``.

Imports: a fresh interpreter per stage list, each stage's CPU seconds (torch, bestshot's CLI and generation
modules, the model-file readers, scipy for the region scorer; then, for reference, the transformers and
diffusers classes the embedded model no longer imports, see ``bestshot.models.lite``).

Before/after: ``--before-src DIR`` (another checkout's ``src``, e.g. a ``git archive`` of main) runs its cold
runs alternating with these, so both see the same load on a shared machine; the kept seed and pixels of
both are printed together (one value each when they agree).

Which code runs: whatever ``bestshot`` the interpreter imports (set PYTHONPATH to a checkout's ``src`` to
compare two). The kept seed and a hash of the kept PNG's pixels are printed, so that two checkouts can be
checked for the same result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle above a blue square"
# The console script, as pip writes it: import main first, then run (cli.py mounts only what argv needs)
LAUNCH = "import sys; sys.argv[0] = 'bestshot'; from bestshot.cli import main; sys.exit(main())"
IMPORT_STAGES = (
    ("torch", "import torch"),
    ("bestshot.cli as `bestshot generate`", "import sys; sys.argv[:] = ['bestshot', 'generate']; import bestshot.cli"),
    ("bestshot generate path (torch-only embedded model)", "import bestshot.generation, bestshot.models.lite.pipeline"),
    ("tokenizers + safetensors (model files)", "import tokenizers, safetensors.torch"),
    ("scipy.ndimage (not on the embedded path: the region scorer's masks are numpy)", "import scipy.ndimage"),
    # no longer on the embedded path (bestshot.models.lite); what a diffusers-backed model still pays on top
    ("transformers CLIP (not on the embedded path)", "from transformers import CLIPModel, CLIPTokenizer"),
    (
        "diffusers UNet + pipeline (not on the embedded path)",
        "from diffusers import DiffusionPipeline, UNet2DConditionModel",
    ),
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def pixel_hash(path: str | Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()[:16]


def run_cold(extra: list[str], env: dict[str, str]) -> dict:
    """One cold run of the README command in a fresh folder: wall, user+sys and the run's log line."""
    with tempfile.TemporaryDirectory(prefix="bestshot-cold-") as work:
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "generate", PROMPT, *extra],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        log = Path(work) / "images_log.jsonl"
        if proc.returncode not in (0, 1) or not log.is_file():  # 1: ran, nothing kept (still a result)
            raise SystemExit(f"bestshot generate failed ({proc.returncode}): {err.strip()[-800:]}")
        rec = json.loads(log.read_text().splitlines()[-1])
        img = rec.get("img_path")
        return {"wall": wall, "rec": rec, "hash": pixel_hash(Path(work) / img) if img else None, "stdout": out}


def measure_cold(reps: int, extra: list[str], env: dict[str, str], label: str = "cold") -> list[dict]:
    runs = []
    for _ in range(reps):
        before = os.times()
        r = run_cold(extra, env)
        after = os.times()
        r["cpu"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        ts = r["rec"].get("timing_s", {})
        r["startup"] = r["wall"] - ts.get("total", 0.0) + ts.get("load", 0.0)
        runs.append(r)
        print(
            f"  {label}: wall {r['wall']:.2f} s, user+sys {r['cpu']:.2f} s, startup {r['startup']:.2f} s, "
            f"timing_s {json.dumps(ts)}, kept seed {r['rec'].get('best_seed')}, pixels {r['hash']}",
            flush=True,
        )
    return runs


WARM = """
import json, sys, tempfile, time, os
from bestshot.cli import app
work = tempfile.mkdtemp(prefix="bestshot-warm-")
log = os.path.join(work, "log.jsonl")
argv = ["generate", sys.argv[2], *sys.argv[3:], "--out", os.path.join(work, "images_out"), "--log", log, "--json"]
walls = []
for k in range(int(sys.argv[1]) + 1):  # the cold runs' command, again in one process (the model stays cached)
    t = time.perf_counter(); app(argv, standalone_mode=False); walls.append(time.perf_counter() - t)
r = json.loads(open(log).read().splitlines()[-1])
print(json.dumps({"first": walls[0], "warm": walls[1:], "timing_s": r["timing_s"], "best_seed": r["best_seed"]}))
"""


def measure_warm(reps: int, env: dict[str, str], extra: list[str] | None = None) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", WARM, str(reps), PROMPT, *(extra or [])],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode:
        raise SystemExit(f"warm run failed: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure_imports(env: dict[str, str]) -> list[tuple[str, float]]:
    """CPU seconds of each import stage, in order, in one fresh interpreter (each stage on top of the last)."""
    code = (
        "import json, time\nout = []\n"
        + "".join(
            f"t = time.process_time()\n{stmt}\nout.append(({name!r}, time.process_time() - t))\n"
            for name, stmt in IMPORT_STAGES
        )
        + "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"import breakdown failed: {p.stderr.strip()[-800:]}")
    return [tuple(x) for x in json.loads(p.stdout.strip().splitlines()[-1])]


def _med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})" if xs else "-"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="cold runs (a new process each)")
    ap.add_argument("--warm-reps", type=int, default=5, help="warm generate() calls in one process (0: skip)")
    ap.add_argument("--no-imports", action="store_true", help="skip the import breakdown")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help="another checkout's src folder: its cold runs alternate with these (same load), reported as 'before'",
    )
    args = ap.parse_args(argv)
    env = dict(os.environ)
    import bestshot

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}; "
        f"bestshot from {Path(bestshot.__file__).parent}",
        flush=True,
    )
    before_env = None
    if args.before_src:
        before_env = {**env, "PYTHONPATH": str(args.before_src.resolve())}
    cold, before = [], []
    for _ in range(args.reps):  # alternated, so that both see the same load on a shared machine
        cold += measure_cold(1, extra, env)
        if before_env:
            before += measure_cold(1, extra, before_env, "before")
    imports = [] if args.no_imports else measure_imports(env)
    warm = measure_warm(args.warm_reps, env, extra) if args.warm_reps > 0 else None
    seeds = sorted({r["rec"].get("best_seed") for r in cold + before}, key=str)
    hashes = sorted({r["hash"] for r in cold + before}, key=str)
    print("| measurement | median (runs) |\n|---|---|")
    print(f"| cold wall s | {_med([r['wall'] for r in cold])} |")
    print(f"| cold user+sys CPU s | {_med([r['cpu'] for r in cold])} |")
    print(f"| cold startup s (wall - generate + load) | {_med([r['startup'] for r in cold])} |")
    for key in ("load", "gen", "clip"):
        print(f"| cold timing_s.{key} | {_med([r['rec'].get('timing_s', {}).get(key, 0.0) for r in cold])} |")
    if before:
        print(f"| before: cold wall s | {_med([r['wall'] for r in before])} |")
        print(f"| before: cold user+sys CPU s | {_med([r['cpu'] for r in before])} |")
        print(f"| before: cold startup s | {_med([r['startup'] for r in before])} |")
        print(
            f"| before: cold timing_s.load | {_med([r['rec'].get('timing_s', {}).get('load', 0.0) for r in before])} |"
        )
    if warm:
        print(f"| warm generate() s | {_med(warm['warm'])} |")
    for name, cpu in imports:
        print(f"| import {name} (CPU s) | {cpu:.2f} |")
    print(f"kept seed {seeds}, kept pixels {hashes}, load avg now {os.getloadavg()[0]:.1f}")
    report = {
        "machine": cpu_model(),
        "cold": [{k: v for k, v in r.items() if k != "stdout"} for r in cold],
        "before": [{k: v for k, v in r.items() if k != "stdout"} for r in before],
        "warm": warm,
        "imports": imports,
        "kept_seed": seeds,
        "kept_pixels": hashes,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
