"""``xl3m-stream ingest``: consume a file or stdin into a state directory (resumable)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .intake import feed_input
from .output import removed, report_decoding, report_recovery, want_progress
from .settings import check_input_file, engine_config, state_settings


def cmd_ingest(args: argparse.Namespace) -> int:
    import anyio

    from ..errors import InputError
    from ..sources import DecodeStats

    if args.state_dir is None:
        raise InputError("ingest needs --state-dir DIR (where the stream is kept)")
    if args.question is not None and not args.question.strip():
        raise InputError("--question must not be empty")
    if args.path != "-":
        check_input_file(args.path)
    extra = {"question": args.question} if args.question else {}
    config = engine_config(args, **extra, **state_settings(args))
    stats = DecodeStats()
    show = want_progress(args)

    async def run() -> dict[str, Any]:
        from .. import Engine

        started = time.perf_counter()
        async with Engine(config) as engine:
            report_recovery(engine)
            before, cut_before = engine.stream_tokens, engine.stats().segments_cut
            resume = await feed_input(engine, args, stats, show)
            after = engine.stats()
            return {
                "notes": resume.notes() if resume is not None else [],
                "resumed_at_char": resume.skip if resume is not None else 0,
                "state_dir": str(engine.recovery.state_dir if engine.recovery else args.state_dir),
                "tokens_added": after.tokens_in - before,
                "segments_added": after.segments_cut - cut_before,
                "stream_tokens": after.tokens_in,
                "store_segments": after.store_segments,
                "failed_segments": len(engine.failed_segments),
                "skipped_records": stats.skipped_records,
                "invalid_utf8_replaced": stats.replaced,
                "nul_removed": stats.nul_removed,
                "seconds": round(time.perf_counter() - started, 3),
            }

    result = anyio.run(run)
    report_decoding(stats)
    for note in result.pop("notes"):
        print(f"xl3m-stream: note: {note}", file=sys.stderr)
    if result["tokens_added"] == 0 and not result["resumed_at_char"]:
        print(f"xl3m-stream: note: the input was empty{removed(stats)}: nothing was added", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(
            f"ingested {result['tokens_added']:,} tokens ({result['segments_added']:,} segments) into "
            f"{result['state_dir']}; the stream now holds {result['stream_tokens']:,} tokens"
        )
    return 0
