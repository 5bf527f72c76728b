"""Peak memory and time per token against stream length, with a fixed store size.

    python benchmarks/memory.py [--sizes 100000,1000000] [--model M] [--json]

Each size runs in a fresh process (peak RSS only grows within a process), streaming a passkey
document of that many tokens (EVAL.md's format, key at depth 0.5) through the engine with the
question set and the default store (64 segments), then asking. Reported per size: peak RSS in
MiB, milliseconds per 1,000 tokens, and whether the answer holds the key. ``growth`` is largest
/ smallest peak RSS; ``time_growth`` is the same for time per token. The last stdout line
(``--json``) holds both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, now, peak_rss_mb


def one(size: int, model: str, batch_size: int) -> dict[str, Any]:
    import anyio

    from xl3m_stream import Engine, EngineConfig
    from xl3m_stream.evaluate.metrics import first_int_match
    from xl3m_stream.evaluate.tasks import PASSKEY_QUESTION, make_sample

    async def run() -> dict[str, Any]:
        config = EngineConfig(model=model, question=PASSKEY_QUESTION, batch_size=batch_size)
        async with Engine(config) as engine:
            loaded_rss = peak_rss_mb()
            tok = engine.tokenizer
            sample = make_sample(
                "passkey",
                length=size,
                seed=5,
                depth=0.5,
                count_tokens=lambda t: len(tok.encode(t, add_special_tokens=False)),
            )
            text = sample.context
            t0 = now()
            step = 1 << 15
            for i in range(0, len(text), step):
                await engine.feed(text[i : i + step])
            await engine.flush()
            seconds = now() - t0
            del text
            answer = await engine.ask(PASSKEY_QUESTION)
            return {
                "tokens": engine.stream_tokens,
                "seconds": round(seconds, 2),
                "ms_per_1k_tokens": round(1e6 * seconds / engine.stream_tokens, 2),
                "rss_after_load_mb": round(loaded_rss, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "store_segments": len(engine.store),
                "answer_segments": len(answer.segments),
                "answer": answer.text,
                "passkey_correct": first_int_match(answer.text, sample.answers[0]),
            }

    return anyio.run(run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated stream lengths in tokens")
    p.add_argument("--model", default="default")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.model, args.batch_size)))
        return 0
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    runs = {}
    for size in sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", str(size), "--model", args.model]
        cmd += ["--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {size} failed")
        runs[size] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{size:,} tokens: {runs[size]}", file=sys.stderr, flush=True)
    rss = {str(k): v["peak_rss_mb"] for k, v in runs.items()}
    per_token = {str(k): v["ms_per_1k_tokens"] for k, v in runs.items()}
    small, large = str(min(sizes)), str(max(sizes))
    result = {
        "rss_mb": rss,
        "ms_per_1k_tokens": per_token,
        "growth": round(rss[large] / rss[small], 4),
        "time_growth": round(per_token[large] / per_token[small], 4),
        "runs": {str(k): v for k, v in runs.items()},
        "model": args.model,
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
