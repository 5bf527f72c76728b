"""``xl3m-stream watch``: follow a log with standing questions and print alerts."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from . import EXIT_ERROR
from .output import report_decoding
from .settings import check_input_file, engine_config


def cmd_watch(args: argparse.Namespace) -> int:
    import anyio

    from ..errors import InputError
    from ..monitor import DEFAULT_WATCH_MEASURE, SIGNAL_MEASURES, check_watch_options

    questions = list(args.questions)
    if any(not q.strip() for q in questions):
        raise InputError("--question must not be empty")
    if args.path != "-" and not args.follow:
        check_input_file(args.path)
    if args.path != "-" and os.path.isdir(args.path):
        raise InputError(f"input is a directory, not a file: {args.path}")
    measure = args.measure or DEFAULT_WATCH_MEASURE
    options: dict[str, Any] = {"measure": measure}
    for name in ("threshold", "warmup", "cooldown", "min_score", "min_overlap"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.no_lexical:
        options["min_overlap"] = None
    if args.explain:
        options["explain"] = True
    check_watch_options(questions[0], **options, embedder=args.embedder or "minilm")  # before loading a model
    overrides: dict[str, Any] = {"measure": measure}
    if measure in SIGNAL_MEASURES:  # a watch's signal only: the engine keeps its certainty measure
        args.measure, overrides = None, {}
    if not args.explain:  # alerts alone need no reader: do not load one (the default is a 1.5B model)
        overrides["reader_model"] = None
    config = engine_config(args, question=questions[0], segment_cut="lines", **overrides)
    try:
        result = anyio.run(_watch, args, questions, options, config)
    except Exception as exc:  # a failure inside the pipeline's task group: report the error itself
        raise _first_error(exc) from None
    if result["broken_pipe"]:  # the reader of our output went away (`| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    report_decoding(result["decoding"])
    print(
        f"xl3m-stream: watched {result['tokens']:,} tokens in {result['segments']:,} segments against "
        f"{len(questions)} question(s): {result['alerts']} alert(s) in {result['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


async def _watch(
    args: argparse.Namespace, questions: list[str], options: dict[str, Any], config: Any
) -> dict[str, Any]:
    """The watch pipeline: source -> engine with standing questions -> alerts on stdout."""
    from contextlib import aclosing

    import anyio

    from .. import Alert, Engine, EventsDropped
    from ..sources import DecodeStats, follow, jsonl_records, read_lines

    stats = DecodeStats()
    if args.path == "-" or not args.follow:
        lines = read_lines(args.path, stats=stats)
    else:
        lines = follow(args.path, from_start=not args.from_end, idle_timeout=args.idle_timeout, stats=stats)
    if args.format == "jsonl":
        source = jsonl_records(lines, message_field=args.message_field, stats=stats)
    else:
        source = _with_log_fields(lines)
    started = time.perf_counter()
    async with Engine(config) as engine:
        for q in questions:
            engine.watch(q, **options)
        events = engine.events()

        broken_pipe = False

        async def print_alerts() -> None:
            nonlocal broken_pipe
            async for event in events:
                try:
                    if isinstance(event, Alert):
                        _print_alert(event, args.jsonl)
                    elif isinstance(event, EventsDropped):
                        dropped = f"{event.count} event(s) dropped (output too slow)"
                        print(f"xl3m-stream: warning: {dropped}", file=sys.stderr)
                except BrokenPipeError:
                    broken_pipe = True
                    tg.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(print_alerts)
            send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=256)

            async def pump() -> None:
                async with send, aclosing(source) as chunks:
                    async for chunk in chunks:
                        await send.send(chunk)

            tg.start_soon(pump)

            async def arriving() -> AsyncIterator[Any]:
                """The log's chunks for ``Engine.process``. When the log has been quiet for
                ``--flush-after`` seconds since a chunk was fed, what is pending is scored first
                (a flush between two feeds: ``process`` is waiting for the next chunk)."""
                fed = False  # tokens fed since the last flush
                async with receive:
                    while True:
                        chunk = None
                        with anyio.move_on_after(args.flush_after or math.inf):
                            try:
                                chunk = await receive.receive()
                            except anyio.EndOfStream:
                                return
                        if chunk is None:  # the log is quiet: score what is pending now
                            if fed:
                                await engine.flush()
                                fed = False
                            continue
                        yield chunk  # (outside the cancel scope: it is not held across the feed)
                        fed = True

            async with aclosing(arriving()) as chunks:
                await engine.process(chunks, flush=True)
            await engine.explained()
            events.close()
        m = engine.metrics()
    return {
        "tokens": m.tokens_in,
        "segments": m.segments_scored,
        "alerts": m.alerts,
        "seconds": time.perf_counter() - started,
        "decoding": stats,
        "broken_pipe": broken_pipe,
    }


def _first_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups, else ``exc`` itself."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and len(exc.exceptions) == 1:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


async def _with_log_fields(lines: Any) -> Any:
    """Plain log lines with what :func:`~xl3m_stream.sources.parse_log_line` finds in them as meta."""
    from contextlib import aclosing

    from ..sources import TextChunk, parse_log_line

    async with aclosing(lines) as chunks:
        async for chunk in chunks:
            fields = parse_log_line(chunk.text) if "part" not in (chunk.meta or {}) else {}
            yield TextChunk(text=chunk.text, meta={**fields, **(chunk.meta or {})}) if fields else chunk


def _print_alert(alert: Any, jsonl: bool) -> None:
    if jsonl:
        import msgspec

        print(msgspec.json.encode(alert).decode(), flush=True)
        return
    meta = alert.meta or {}
    where = f"tokens {alert.start:,}-{alert.end:,}"
    if "line_start" in meta:
        where = f"lines {meta['line_start']}-{meta['line_end']}"
    if "ts_start" in meta:
        where += f"  {meta['ts_start']} .. {meta['ts_end']}"
    print(
        f"ALERT [{alert.question_index}] {alert.question}  score {alert.score:.3f} > {alert.threshold:.3f}"
        f" ({alert.measure})  {where}"
    )
    for line in alert.text.rstrip("\n").split("\n"):
        print(f"  | {line}")
    if alert.explanation is not None:
        print(f"  answer: {alert.explanation}")
    print(flush=True)
