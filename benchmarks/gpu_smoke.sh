#!/usr/bin/env bash
# GPU readiness: every model for one epoch on ml-100k with --device cuda, then a two-trial grid
# sharing the GPU; prints each model's epoch time and peak GPU memory (benchmarks/gpu_smoke.py).
# On a machine without CUDA it says so and exits 0 (CI has none); DEVICE=cpu runs the same steps
# on the CPU, to try the script itself (with --models to keep it short).
#   bash benchmarks/gpu_smoke.sh [--models SASRec TIGER ...] [--epochs 1] [--no-grid | --grid-only]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
DEVICE=${DEVICE:-cuda}
CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")  # fails loudly without torch
if [ "$DEVICE" != cpu ] && [ "$CUDA" != 1 ]; then
    echo "gpu_smoke: no CUDA device on this machine; nothing run (DEVICE=cpu tries the script on the CPU)"
    exit 0
fi
exec "$PYTHON" benchmarks/gpu_smoke.py --device "$DEVICE" "$@"
