"""Peak memory and time per token against stream length, with a fixed store size.

    python benchmarks/memory.py [--sizes 100000,1000000] [--model M] [--json]
    python benchmarks/memory.py --shape free --json   # the engine's own memory, in minutes

One passkey document of the largest size (EVAL.md's format, key at depth 0.5) is generated in a
separate process and written to a temporary file, so building it (the generator tokenises the
whole text to hit the length) never counts. A fresh process then streams the file through the
engine in 32 KiB reads, as a user tailing a file would, with the question set and the default
store (64 segments). When the scored stream passes each size it records the peak RSS so far
(MiB) and the mean time per 1,000 tokens so far; at the end it asks and checks the key.
``growth`` is peak RSS at the largest size / at the smallest; ``time_growth`` the same for
time per token. The last stdout line (``--json``) holds both.

``--shape free`` scores with a near-free random forward of the default model's vocabulary and
keeps every other default (BM25, the MiniLM dense signal, the store, overlap): the engine's own
memory at 1M tokens in a few minutes. Random weights answer nothing, so it reports
``key_in_context`` (the key reached the key context, by BM25 and the dense signal) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit, now, peak_rss_mb, random_model

READ = 1 << 15  # bytes per read from the stream file


def generate(size: int, model: str, path: str) -> None:
    """Write a passkey document of ``size`` tokens to ``path``; the key goes to ``path + '.key'``."""
    from xl3m_stream import models
    from xl3m_stream.evaluate.tasks import make_sample

    tok = models.load_tokenizer(models.resolve(model))
    sample = make_sample(
        "passkey",
        length=size,
        seed=5,
        depth=0.5,
        count_tokens=lambda t: len(tok.encode(t, add_special_tokens=False)),
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(sample.context)
    with open(path + ".key", "w", encoding="utf-8") as f:
        f.write(sample.answers[0])


def measure(path: str, sizes: list[int], model: str, batch_size: int, shape: str | None) -> dict[str, Any]:
    import anyio
    import torch

    from xl3m_stream import Engine, EngineConfig, models
    from xl3m_stream.evaluate.metrics import first_int_match
    from xl3m_stream.evaluate.tasks import PASSKEY_QUESTION

    with open(path + ".key", encoding="utf-8") as f:
        key = f.read()

    async def run() -> dict[str, Any]:
        config = EngineConfig(model=model, question=PASSKEY_QUESTION, batch_size=batch_size)
        scorer = tokenizer = None
        if shape:  # random weights of this shape score; everything else is the default engine
            tokenizer = models.load_tokenizer(models.resolve(model))
            dtype = models.pick_dtype(torch.device("cpu"), config.dtype)
            scorer = random_model(shape, len(tokenizer), "cpu", dtype)
        async with Engine(config, model=scorer, tokenizer=tokenizer) as engine:
            loaded_rss = peak_rss_mb()
            checkpoints: dict[str, dict[str, float]] = {}
            todo = sorted(sizes)
            t0 = now()

            async def record() -> None:
                await engine.drain()  # everything cut so far is scored
                n = engine.stats().scored_tokens
                seconds = now() - t0
                point = {
                    "scored_tokens": n,
                    "seconds": round(seconds, 2),
                    "ms_per_1k_tokens": round(1e6 * seconds / n, 2),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                }
                checkpoints[str(todo.pop(0))] = point
                print(f"{n:,} tokens: {point}", file=sys.stderr, flush=True)

            with open(path, encoding="utf-8") as f:
                while chunk := f.read(READ):
                    await engine.feed(chunk)
                    if len(todo) > 1 and engine.stream_tokens >= todo[0]:
                        await record()
            await engine.flush()
            await record()  # the largest size: the whole stream
            out: dict[str, Any] = {
                "tokens": engine.stream_tokens,
                "rss_after_load_mb": round(loaded_rss, 1),
                "checkpoints": checkpoints,
                "store_segments": len(engine.store),
            }
            if shape:  # random weights read nothing: check that the key reached the key context
                context = await engine.key_context(PASSKEY_QUESTION)
                out["key_in_context"] = key in "".join(s.text for s in context.segments)
                return out
            answer = await engine.ask(PASSKEY_QUESTION)
            out.update(
                answer_segments=len(answer.segments),
                answer=answer.text,
                passkey_correct=first_int_match(answer.text, key),
            )
            return out

    return anyio.run(run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated stream lengths in tokens")
    p.add_argument("--model", default="default")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--shape",
        help="score with random weights of this shape (benchmarks/common.py SHAPES; 'free' is a near-free "
        "forward): the engine's own memory, every other setting the default's",
    )
    p.add_argument("--generate", help=argparse.SUPPRESS)  # internal: write the document to this path
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: stream this document and measure
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    if not sizes or sizes[0] <= 0:
        p.error("--sizes needs positive token counts")
    if args.generate:
        generate(sizes[-1], args.model, args.generate)
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, sizes, args.model, args.batch_size, args.shape)))
        return 0
    me = [sys.executable, os.path.abspath(__file__), "--sizes", args.sizes, "--model", args.model]
    with tempfile.TemporaryDirectory(prefix="xl3m-memory-") as tmp:
        doc = os.path.join(tmp, "stream.txt")
        measuring = ["--measure", doc, "--batch-size", str(args.batch_size)]
        if args.shape:
            measuring += ["--shape", args.shape]
        for step in (["--generate", doc], measuring):
            out = subprocess.run(me + step, stdout=subprocess.PIPE, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"memory: {step[0]} failed (exit {out.returncode})")
        run = json.loads(out.stdout.strip().splitlines()[-1])
    cps = run["checkpoints"]
    small, large = str(sizes[0]), str(sizes[-1])
    result = {
        "rss_mb": {k: v["peak_rss_mb"] for k, v in cps.items()},
        "ms_per_1k_tokens": {k: v["ms_per_1k_tokens"] for k, v in cps.items()},
        "growth": round(cps[large]["peak_rss_mb"] / cps[small]["peak_rss_mb"], 4),
        "time_growth": round(cps[large]["ms_per_1k_tokens"] / cps[small]["ms_per_1k_tokens"], 4),
        "passkey_correct": run.get("passkey_correct"),
        "key_in_context": run.get("key_in_context"),
        "run": run,
        "model": args.model,
        "shape": args.shape,
        "cpu": cpu_model(),
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
