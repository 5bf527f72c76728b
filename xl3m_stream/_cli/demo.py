"""``xl3m-stream demo``: passkey retrieval from a stream of 100k+ tokens."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from .._engine.answer import answer_json
from .output import Progress, want_progress
from .settings import engine_config


def cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from ..demo import passkey_document
    from ..errors import InputError
    from ..evaluate.metrics import first_int_match
    from ..tokenizer import IncrementalTokenizer

    if args.tokens < 1000:
        raise InputError("--tokens must be at least 1000")
    if args.depth is not None and not 0.0 <= args.depth <= 1.0:
        raise InputError("--depth must be between 0 and 1")
    config = engine_config(args)
    if args.max_new_tokens is None:  # the key is a number: a few tokens answer it
        import msgspec

        config = msgspec.structs.replace(config, max_new_tokens=16)
    show = want_progress(args)

    async def run() -> dict[str, Any]:
        from .. import Engine

        started = time.perf_counter()
        async with Engine(config) as engine:
            loaded = time.perf_counter()
            tokenizer = engine.tokenizer
            depth = args.depth if args.depth is not None else (args.seed * 0.618034) % 1.0

            def count(text: str) -> int:
                return len(tokenizer.encode(text, add_special_tokens=False))

            def count_stream(pieces: Any) -> int:  # the document is never held whole: bounded memory
                itok = IncrementalTokenizer(tokenizer)
                return sum(len(itok.push(piece)) for piece in pieces) + len(itok.flush())

            # make_sample's passkey document, produced in pieces (sized off the event loop)
            doc = await anyio.to_thread.run_sync(
                lambda: passkey_document(
                    args.tokens, seed=args.seed, depth=depth, count_tokens=count, count_stream=count_stream
                )
            )
            await engine.set_question(doc.question)
            if not args.json:
                print(
                    f"passkey demo: {args.tokens:,} tokens ({args.tokens / engine.model_window:.1f}x the "
                    f"{engine.model_window:,}-token window of the scorer {engine.model_name}; read by "
                    f"{engine.reader_name}), key at depth {depth:.2f}",
                    file=sys.stderr,
                )
            with Progress(show, doc.chars, "streaming", unit="chars") as bar:

                def pieces() -> Iterator[str]:
                    """The document in pieces for ``Engine.process``; the bar moves once each is fed."""
                    done = 0
                    for piece in doc.pieces(1 << 15):
                        yield piece
                        done += len(piece)
                        bar.update(done, engine.stream_tokens)

                await engine.process(pieces(), flush=True)
                bar.update(doc.chars, engine.stream_tokens)
            ingested = time.perf_counter()
            answer = await engine.ask(doc.question)
            result = answer_json(answer, time.perf_counter() - started)
            result.update(
                expected=doc.answer,
                correct=first_int_match(answer.text, doc.answer),
                depth=depth,
                model=engine.model_name,
                window=engine.reader_window,
                model_window=engine.model_window,
                reader=engine.reader_name,
                load_seconds=round(loaded - started, 3),
                ingest_seconds=round(ingested - loaded, 3),
                ingest_tokens_per_s=round(engine.stream_tokens / max(ingested - loaded, 1e-9), 1),
            )
            return result

    result = anyio.run(run)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"answer:   {result['answer'].strip()!r}")
    print(f"true key: {result['expected']}   ->  {'CORRECT' if result['correct'] else 'WRONG'}")
    print("key context (stream order):")
    for seg in result["segments"]:
        snippet = seg["text"].replace("\n", " ")
        if len(snippet) > 90:
            snippet = snippet[:87] + "..."
        score = "  local" if seg["score"] is None else f"{seg['score']:7.3f}"
        mark = "  <- holds the key" if result["expected"] in seg["text"] else ""
        print(f"  tokens {seg['start']:>8,}-{seg['end']:<8,} score {score}  {snippet}{mark}")
    print(
        f"time: {result['seconds']:.1f} s total ({result['load_seconds']:.1f} s loading, "
        f"{result['ingest_seconds']:.1f} s streaming {result['stream_tokens']:,} tokens = "
        f"{result['ingest_tokens_per_s']:.0f} tokens/s, answer {result['ask_seconds']:.1f} s)"
    )
    return 0
