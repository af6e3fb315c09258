#!/usr/bin/env bash
# Every GPU speed lever of bestshot in one run: one JSON and one Markdown table (bench/gpu_all.py).
#   bash bench/gpu_all.sh [--tiny] [--out DIR] [--skip load,speed,compile,fp8,world] [--reps N]
# Installs nothing from the network. Packages the GPU machine lacks (diffusers, torchao, open_clip_torch
# for the CLIP vocabulary) may lie as wheels in .whl/ at the repository root; they are installed from
# there into a scratch folder, never over the machine's own packages. On an H200 the full run takes
# about 7 minutes; --tiny runs tiny models on the CPU (what CI executes).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/bestshot-bench-site"
  python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 bench/gpu_all.py "$@"
