"""What the commands tell the user besides their result: notes on stderr, progress bars, answers as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def report_decoding(stats: Any) -> None:
    if stats.replaced or stats.nul_removed:
        print(
            f"xl3m-stream: note: input was not clean UTF-8: {stats.replaced} invalid sequence(s) replaced, "
            f"{stats.nul_removed} NUL byte(s) removed",
            file=sys.stderr,
        )
    if getattr(stats, "skipped_records", 0):
        print(
            f"xl3m-stream: note: skipped {stats.skipped_records} JSON-lines record(s) that were malformed, "
            f"not objects, without a message, or too long",
            file=sys.stderr,
        )


def report_recovery(engine: Any) -> None:
    report = engine.recovery
    if report is not None:
        for note in report.notes():
            print(f"xl3m-stream: note: {note}", file=sys.stderr)


def removed(stats: Any) -> str:
    """What decoding took out of an input that ended up empty, for the message saying so."""
    parts = [(stats.nul_removed, "NUL byte(s) removed"), (stats.skipped_records, "record(s) skipped")]
    removed = [f"{n} {what}" for n, what in parts if n]
    return f" ({', '.join(removed)})" if removed else ""


def want_progress(args: argparse.Namespace) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


class Progress:
    """A tqdm bar on stderr (or nothing), showing input consumed and tokens streamed."""

    def __init__(self, enabled: bool, total: int | None, desc: str, unit: str = "B") -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True)

    def update(self, done: int, tokens: int) -> None:
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str(f"{tokens:,} tokens", refresh=False)
            self._bar.refresh()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
