"""Time from ``ask`` to the first and the last answer token, with and without re-scoring.

    python benchmarks/latency.py [--tokens 20000] [--model M] [--repeat 3] [--json]
    python benchmarks/latency.py --device cuda:0 --shape llama2-7b --dtype bfloat16 \
        --tokens 200000 --context-tokens 4096 --json     # GPU: a 4k-token key context

A stream of prose goes through the engine with a standing question; then three kinds of ask,
each ``--repeat`` times (medians): the standing question (candidates already scored against
it: no re-scoring), a new question with re-scoring of the stored candidates (``rescore="auto"``,
the default), and the new question without (``rescore="never"``). The last stdout line
(``--json``) holds ``first_token_s`` and ``total_s`` for each.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit, median, now, random_model, stream_text

STANDING = "Which town did the carpenter visit before the storm?"
NEW = "Who repaired the old bridge?"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from xl3m_stream import Engine, EngineConfig, models

    config = EngineConfig(
        model=args.model,
        question=STANDING,
        devices=[args.device],
        dtype=args.dtype,
        relevance=[x.strip() for x in args.relevance.split(",") if x.strip()],
        **({"context_tokens": args.context_tokens} if args.context_tokens else {}),
        **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}),
        # a random-weight shape reads with itself (there is no reader of that shape to load)
        **({"reader_model": None} if args.shape else {}),
    )
    model = tokenizer = None
    if args.shape:
        tokenizer = models.load_tokenizer(models.resolve(args.model))
        model = random_model(
            args.shape, len(tokenizer), args.device, models.pick_dtype(torch.device(args.device), args.dtype)
        )
    async with Engine(config, model=model, tokenizer=tokenizer) as engine:
        text = stream_text(engine.tokenizer, args.tokens, seed=4)
        await engine.process([text])
        cases = {
            "no_rescore": (STANDING, "auto"),
            "rescore": (NEW, "always"),
            "new_question_without_rescore": (NEW, "never"),
        }
        out: dict[str, Any] = {}
        for name, (question, policy) in cases.items():
            firsts, totals, rescored = [], [], 0
            for _ in range(args.repeat):
                t0 = now()
                first = None
                async for _piece in engine.ask_stream(question, rescore=policy):
                    first = first if first is not None else now() - t0
                totals.append(now() - t0)
                firsts.append(first if first is not None else totals[-1])
                answer = await engine.key_context(question, rescore="never")
                rescored = len(answer.segments)
            out[name] = {
                "first_token_s": round(median(firsts), 3),
                "total_s": round(median(totals), 3),
                "key_context_segments": rescored,
            }
        out["stream_tokens"] = engine.stream_tokens
        out["store_segments"] = len(engine.store)
        out["model"] = args.shape or engine.model_name
        out["context_tokens"] = engine.config.context_tokens
        out["device"] = args.device + (
            f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else ""
        )
        out["cpu"] = cpu_model()
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--model", default="default")
    p.add_argument("--shape", help="random weights of this shape (benchmarks/common.py SHAPES), reading with itself")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--relevance", default="certainty,lexical,dense", help="relevance signals, comma-separated")
    p.add_argument("--context-tokens", type=int, help="key-context budget (default: the engine's)")
    p.add_argument("--max-new-tokens", type=int, help="answer length cap (default: the engine's)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import anyio

    result = anyio.run(run, args)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
