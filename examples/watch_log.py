"""Monitor a service log from Python: standing questions, alerts as they happen.

    python examples/watch_log.py                   # a generated log with incidents, the default model
    python examples/watch_log.py --path app.log -q "Which service ran out of disk space?"
    python examples/watch_log.py --model DIR       # another scoring model (a local directory, .gguf, ...)

Each segment of the log is scored against every watched question in one shared pass; a
segment whose relevance is well above the question's usual scores (``--threshold auto``, the
measured one: two standard deviations above the mean of the recent scores with the lexical
gate, four without) and that holds enough of the
question's informative words (the lexical gate, ``--min-overlap 0.2``) raises an ``Alert``
event, printed here with its line range and time range. The command-line equivalent is
``xl3m-stream watch PATH --question ...``; see docs/MONITORING.md.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import AsyncIterator

import anyio

from xl3m_stream import Alert, Engine, EngineConfig
from xl3m_stream.evaluate.haystack import incident_log
from xl3m_stream.sources import TextChunk, parse_log_line, read_lines


async def generated(lines: list[str]) -> AsyncIterator[TextChunk]:
    for n, line in enumerate(lines, 1):
        yield TextChunk(text=line, meta={"line": n, **parse_log_line(line)})


async def from_file(path: str) -> AsyncIterator[TextChunk]:
    async for chunk in read_lines(path):
        yield TextChunk(text=chunk.text, meta={**(chunk.meta or {}), **parse_log_line(chunk.text)})


async def main(args: argparse.Namespace) -> None:
    if args.path:
        if not args.question:
            raise SystemExit("watch_log.py: give at least one --question with --path")
        questions, source = args.question, from_file(args.path)
        print(f"watching {args.path}")
    else:
        log = incident_log(
            random.Random(args.seed), args.lines, watched=2, repeats=1, distractors=1, start=0.4, min_gap=30
        )
        questions = args.question or log.questions
        source = generated(log.lines)
        print(f"watching a generated log of {len(log.lines)} lines; injected incidents:")
        for inc in log.incidents:
            flag = "watched" if inc.watched else "not watched"
            print(f"  lines {', '.join(map(str, inc.lines))}: {inc.incident.kind} in [{inc.service}] ({flag})")
    config = EngineConfig(
        model=args.model,
        segment_tokens=args.segment_tokens,
        segment_cut="lines",  # a log line is never cut in two
        question=questions[0],  # the store ranks by the first question (it is scored once, shared)
        dtype="float32",
    )
    started = time.perf_counter()
    async with Engine(config) as engine:
        for q in questions:
            engine.watch(q, threshold=args.threshold, warmup=args.warmup, min_overlap=args.min_overlap)
        events = engine.events()

        async def print_alerts() -> None:
            async for event in events:
                if isinstance(event, Alert):
                    meta = event.meta or {}
                    print(
                        f"ALERT {event.question!r}: lines {meta.get('line_start')}-{meta.get('line_end')} "
                        f"({meta.get('ts_start')} .. {meta.get('ts_end')}), score {event.score:.2f} > "
                        f"{event.threshold:.2f}"
                    )
                    for line in event.text.splitlines():
                        if any(level in line for level in ("ERROR", "FATAL", "WARN")):
                            print(f"    {line}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(print_alerts)
            await engine.process(source)
            events.close()
        m = engine.metrics()
        for w in engine.watches():
            print(f"{w.question!r}: {w.alerts} alert(s) over {w.seen} segments (threshold now {w.current_threshold})")
    print(
        f"{m.tokens_in:,} tokens, {m.segments_scored} segments, {m.alerts} alert(s) in "
        f"{time.perf_counter() - started:.1f} s (scoring p50 {m.scoring_latency.p50_s or 0:.2f} s a batch)"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Watch a service log with standing questions.")
    p.add_argument("--path", help="a log file to read (default: a generated log with incidents)")
    p.add_argument("-q", "--question", action="append", help="a standing question (repeatable)")
    p.add_argument("--model", default="default", help="scoring model (default: the library's default)")
    p.add_argument("--lines", type=int, default=240, help="lines of the generated log (default 240)")
    p.add_argument("--seed", type=int, default=3, help="seed of the generated log")
    p.add_argument("--threshold", default="auto", help="auto, pNN, zN or a number (default auto: z2 gated, z4 not)")
    p.add_argument("--min-overlap", type=float, default=0.2, help="lexical gate (default 0.2)")
    p.add_argument("--no-lexical", dest="min_overlap", action="store_const", const=None, help="no lexical gate")
    p.add_argument("--warmup", type=int, default=24, help="segments observed before alerting (default 24)")
    p.add_argument("--segment-tokens", type=int, default=128)
    return p.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse())
