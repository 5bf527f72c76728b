#!/usr/bin/env bash
# Issue 17's GPU measurement in one call, needing nothing but this repo on a CUDA machine.
#
#   here (once):   bash scripts/gpu_prepare.sh      # wheels the GPU machine lacks -> .whl/, tokenizer -> .gpu/
#   there:         bash benchmarks/gpu.sh            # ~6 min on one H100/H200; JSON under $OUT (or /tmp/xl3m-gpu)
#
# Prints, for a Llama-2-7B-shaped model with random weights in bf16 on cuda:0: the raw forward's
# and the engine's stream tokens/s, eager and compiled (static shapes), their ratio, MFU, the
# engine's own ceiling (a near-free forward) on that host, and `ask` latency with a 4k-token key
# context. The relevance is certainty + lexical: the dense signal's MiniLM is not carried (22M
# parameters against 6.7B, it would not change the figures). XL3M_GPU_SMOKE=1 runs every step
# with tiny sizes on the CPU, to check the script before spending device time on it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/xl3m-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import msgspec" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/xl3m-site .whl/*.whl
    export PYTHONPATH=/tmp/xl3m-site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
TOKENIZER=default
[ -f .gpu/tokenizer/tokenizer.json ] && TOKENIZER=.gpu/tokenizer

if [ "${XL3M_GPU_SMOKE:-0}" = 1 ]; then
    DEV=cpu; SHAPE=free; DTYPE=float32; TOKENS=6000; BATCH=4; SEG=256; REPEAT=1; LAT_TOKENS=4000; CTX=512
else
    DEV=cuda:0; SHAPE=llama2-7b; DTYPE=bfloat16; TOKENS=1000000; BATCH=60; SEG=512; REPEAT=3; LAT_TOKENS=200000; CTX=4096
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"

common=(--device "$DEV" --dtype "$DTYPE" --model "$TOKENIZER" --relevance certainty,lexical --json)
step() {  # name, then the command: the last stdout line (JSON) goes to $OUT/name.json, the rest to name.log
    local name=$1; shift
    echo "== $name: $*"
    if "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"; then
        tail -n 1 "$OUT/$name.out" | tee "$OUT/$name.json"
    else
        echo "$name failed (exit $?):"; tail -n 20 "$OUT/$name.log"
    fi
}
step ingest_eager "$PY" benchmarks/ingest.py "${common[@]}" --shape "$SHAPE" --batch-size "$BATCH" \
    --segment-tokens "$SEG" --tokens "$TOKENS" --repeat "$REPEAT"
step ingest_compiled "$PY" benchmarks/ingest.py "${common[@]}" --shape "$SHAPE" --batch-size "$BATCH" \
    --segment-tokens "$SEG" --tokens "$TOKENS" --repeat "$REPEAT" --compile
step ceiling "$PY" benchmarks/ingest.py "${common[@]}" --shape free --batch-size "$BATCH" \
    --segment-tokens "$SEG" --tokens "$TOKENS" --repeat "$REPEAT"
step latency "$PY" benchmarks/latency.py --device "$DEV" --dtype "$DTYPE" --model "$TOKENIZER" \
    --relevance certainty,lexical --shape "$SHAPE" --tokens "$LAT_TOKENS" --context-tokens "$CTX" \
    --max-new-tokens 32 --repeat 3 --json
echo "== done: $OUT"
