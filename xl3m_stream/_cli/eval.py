"""``xl3m-stream eval``: accuracy and selection on generated long-context tasks."""

from __future__ import annotations

import argparse
import json
import sys

from .output import want_progress
from .settings import check_input_file, engine_config


def cmd_eval(args: argparse.Namespace) -> int:
    import anyio
    import msgspec

    from ..evaluate.runner import EvalConfig, run_eval

    cfg = EvalConfig(
        tasks=args.tasks or ["passkey"],
        lengths=args.lengths or [32_000],
        samples=args.samples,
        first_sample=args.first_sample,
        methods=args.methods or ["xl3m", "truncate"],
        seed=args.seed,
        depths=args.depths,
        haystack_files=args.haystack,
        corpus=args.corpus,
        scoring_question_tokens=args.scoring_question_tokens,
        read=args.read,
        keep_signals=args.keep_signals,
        engine=engine_config(args),
    )
    for f in [*cfg.haystack_files, *cfg.corpus]:
        check_input_file(f)
    show = want_progress(args)

    def progress(message: str) -> None:
        if show or not args.json:
            print(f"eval: {message}", file=sys.stderr, flush=True)

    report = anyio.run(lambda: run_eval(cfg, progress=progress))
    if args.report:
        from ..evaluate.report import write_report

        for path in write_report(report, args.report):
            progress(f"wrote {path}")
    if args.json:
        print(json.dumps(msgspec.to_builtins(report)))
        return 0
    from ..evaluate.report import markdown_table

    print(f"model {report.model}, window {report.window:,} tokens; {report.machine}; {report.seconds:.0f} s")
    print(markdown_table(report.results, report.window))
    return 0
