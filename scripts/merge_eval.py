"""Merge evaluation reports of one setup split over seeds (or machines) into one.

    python scripts/merge_eval.py A.json B.json [--out MERGED.json]

Each input is the JSON of ``xl3m-stream eval --json`` (or a report's results.json). Prints the
merged Markdown table; ``--out`` also writes the merged JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from xl3m_stream.evaluate.report import markdown_table, merge_reports
from xl3m_stream.evaluate.runner import Report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write the merged report's JSON here")
    args = p.parse_args(argv)
    try:
        reports = [msgspec.json.decode(path.read_bytes(), type=Report) for path in args.reports]
        merged = merge_reports(reports)
    except (OSError, msgspec.DecodeError, ValueError) as exc:
        print(f"merge_eval: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(json.dumps(msgspec.to_builtins(merged), indent=1) + "\n", encoding="utf-8")
    print(f"{merged.machine}; {merged.seconds:.0f} s; reader {merged.reader}")
    print(markdown_table(merged.results, merged.window))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
