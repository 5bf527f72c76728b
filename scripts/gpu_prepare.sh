#!/usr/bin/env bash
# Prepare a GPU call of benchmarks/gpu.sh (see the device notes in docs/PERFORMANCE.md, "GPU"):
# the wheels the GPU machine lacks (msgspec, for Python 3.12) into .whl/, and the default model's
# tokenizer files (no weights: the benchmark builds random ones) into .gpu/tokenizer. Both are
# git-ignored; name them in the call's carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .whl .gpu/tokenizer
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "msgspec==0.23.0"
dir=$(.venv/bin/python -c "import torch; from xl3m_stream import models; print(models.prepare('default', models.dtype_name(models.pick_dtype(torch.device('cpu'), 'auto'))))")
cp "$dir"/tokenizer.json "$dir"/tokenizer_config.json "$dir"/config.json .gpu/tokenizer/
[ -f "$dir/chat_template.jinja" ] && cp "$dir/chat_template.jinja" .gpu/tokenizer/
du -sh .whl .gpu
