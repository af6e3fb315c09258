#!/usr/bin/env bash
# Reproduce bestshot's embedded model (src/bestshot/models/embedded/) from scratch.
# These are the commands and configs that produced the shipped model on 2 shared CPU cores, no GPU
# (the exact history, including one interruption and resume, is in src/bestshot/models/embedded/TRAINING.md).
# `python -m bestshot.train.cli X` is the same as `bestshot train X`.
# Each training step stops at its max_minutes (in the YAML / on the command line) with a checkpoint;
# run it again with --resume to go on. On a GPU, raise steps / batch_size / img_size in the YAMLs.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. CLIP, phase 1: contrastive with hard-negative captions (~14 min cap) -> runs/embedded/clip
python -m bestshot.train.cli clip --config configs/embedded/clip.yaml

# 2. CLIP, phase 2 (runs beside step 3): text tower frozen (the denoiser is conditioned on it), image tower
#    keeps learning (~35 min cap) -> runs/embedded/clip_vision
python -m bestshot.train.cli clip --config configs/embedded/clip_vision.yaml &
CLIP2=$!

# 3. Denoiser on the phase-1 CLIP's text tokens (stops at max_minutes with a checkpoint)
python -m bestshot.train.cli ddpm --config configs/embedded/ddpm.yaml --max-minutes "${DDPM_MINUTES:-60}"
wait "$CLIP2"

# 4. Export the EMA weights with the phase-2 CLIP (same text tower, better image tower), fp16 storage
python -m bestshot.train.cli export --checkpoint runs/embedded/ddpm --out src/bestshot/models/embedded \
  --clip runs/embedded/clip_vision --steps "${STEPS:-20}" --guidance "${GUIDANCE:-4.0}"

# 5. Look at it: grid + denoising GIF
python -m bestshot.train.cli sample --checkpoint src/bestshot/models/embedded \
  --prompts "a red circle" --prompts "a blue square above a yellow triangle" --out runs/embedded/grid.png \
  --gif runs/embedded/denoise.gif
