#!/usr/bin/env bash
# Reproduce bestshot's embedded model (src/bestshot/models/embedded/) from scratch: the CPU stages.
# These are the commands and configs that produced stages 1-8 on 2 CPU cores, no GPU; the
# numbers (time, losses, retrieval accuracy) are in src/bestshot/models/embedded/TRAINING.md.
# `python -m bestshot.train.cli X` is the same as `bestshot train X`.
# Each training command stops at its max_minutes (in the YAML) with a checkpoint; the denoiser goes on
# from there with --resume. The shipped model then went through scripts/train_embedded_gpu.sh (a GPU
# stage of the denoiser), which starts from what step 9 exports.
set -euo pipefail
cd "$(dirname "$0")/.."
# passive OpenMP waiting: a busy neighbour process slows training ~2x instead of 10x+
export OMP_WAIT_POLICY=PASSIVE

# 1. CLIP: contrastive with hard-negative captions, 900 steps (~11 min) -> runs/embedded/clip
python -m bestshot.train.cli clip --config configs/embedded/clip.yaml

# 2. Denoiser conditioned on that CLIP's text tokens, epsilon objective, 3600 steps (~60 min alone)
#    -> runs/embedded/ddpm
python -m bestshot.train.cli ddpm --config configs/embedded/ddpm.yaml

# 3. CLIP stages 2 and 3: more shape edits among the hard negatives, 1500 + 1200 steps (~24 + 20 min)
#    -> runs/embedded/clip_ft, runs/embedded/clip_ft2
python -m bestshot.train.cli clip --config configs/embedded/clip_ft.yaml
python -m bestshot.train.cli clip --config configs/embedded/clip_ft2.yaml

# 4. Denoiser stage 2: v-prediction, conditioned on the stage-3 CLIP, starting from step 2's EMA weights,
#    3000 steps (~50 min alone) -> runs/embedded/ddpm_v
python -m bestshot.train.cli ddpm --config configs/embedded/ddpm_v.yaml

# 5. Denoiser stage 3: step 4's denoiser trained on (same objective and CLIP, lower peak lr), 4000 steps or 80 min
#    (~75 min alone) -> runs/embedded/ddpm_v2
python -m bestshot.train.cli ddpm --config configs/embedded/ddpm_v2.yaml

# 6. CLIP stage 4: the image side only (text tower frozen, so the denoiser's conditioning is unchanged) on
#    blurred, grainy renders, 1000 steps (~25 min) -> runs/embedded/clip_vis
python -m bestshot.train.cli clip --config configs/embedded/clip_vis.yaml

# 7. Export stage 3 with that CLIP: the generator the next CLIP stage learns the look of -> runs/embedded/export_v2
python -m bestshot.train.cli export --checkpoint runs/embedded/ddpm_v2 --clip runs/embedded/clip_vis \
  --out runs/embedded/export_v2 --steps 30 --guidance 1.0 --n-images 8

# 8. CLIP stage 5: the image side again, every other image a world item redrawn by that generator (SDEdit at
#    strength 0.2-0.4, a pool of 3072 cached in the run folder), 800 steps (~15 min) -> runs/embedded/clip_gen
python -m bestshot.train.cli clip --config configs/embedded/clip_gen.yaml

# 9. Export the EMA weights (fp16 storage) with the final CLIP and the recommended sampling settings
python -m bestshot.train.cli export --checkpoint runs/embedded/ddpm_v2 --clip runs/embedded/clip_gen \
  --out src/bestshot/models/embedded \
  --steps "${STEPS:-30}" --guidance "${GUIDANCE:-1.0}" --clip-min "${CLIP_MIN:-0.35}" --n-images 8

# 10. Look at it: grid + denoising GIF
python -m bestshot.train.cli sample --checkpoint src/bestshot/models/embedded \
  --prompts "a red circle" --prompts "a blue square above a yellow triangle" --out runs/embedded/grid.png \
  --gif runs/embedded/denoise.gif
