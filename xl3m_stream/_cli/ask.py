"""``xl3m-stream ask``: answer a question over a file, stdin or a state directory."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .._engine.answer import answer_json
from .intake import feed_input
from .output import removed, report_decoding, report_recovery, want_progress
from .settings import check_input_file, engine_config, require_state, state_settings


def cmd_ask(args: argparse.Namespace) -> int:
    import anyio

    from ..errors import InputError
    from ..sources import DecodeStats

    if not args.question.strip():
        raise InputError("--question must not be empty")
    if args.path is None and args.state_dir is None:
        raise InputError("give PATH (a text file, or - for stdin) or --state-dir DIR")
    if args.rescan and args.state_dir is None:
        raise InputError("--rescan needs --state-dir (the kept stream it scores)")
    if args.path is None:
        require_state(args.state_dir)
    elif args.path != "-":
        check_input_file(args.path)
    config = engine_config(args, question=args.question, **state_settings(args))
    stats = DecodeStats()
    show = want_progress(args)

    async def run() -> dict[str, Any]:
        from .. import Engine

        started = time.perf_counter()
        async with Engine(config) as engine:
            report_recovery(engine)
            if args.path is not None:
                resume = await feed_input(engine, args, stats, show)
                for note in resume.notes() if resume is not None else []:
                    print(f"xl3m-stream: note: {note}", file=sys.stderr)
            if engine.stream_tokens == 0:
                raise InputError(f"the input is empty{removed(stats)}: nothing to answer from")
            if args.rescan:
                await engine.rescan(args.question)
            answer = await engine.ask(args.question)
            return answer_json(answer, time.perf_counter() - started)

    result = anyio.run(run)
    report_decoding(stats)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["answer"].strip())
    return 0
