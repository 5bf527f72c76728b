"""A watch over a real log with a plain-words question: does it alert on one injected device error?

Takes the first ``--lines`` lines of this machine's apt ``term.log`` (real package-manager
output no one here wrote), injects one kernel I/O error line at ``--depth``, and runs the real
command line, ``xl3m-stream watch LOG --no-follow --jsonl -q QUESTION [extra options]``, in a
subprocess. The question shares no word with the error line. Prints each alert's lines and
whether it covers the error, then one JSON object (alerts, hit, false alerts, seconds).

    python benchmarks/watch_real_log.py                                  # the watch's defaults
    python benchmarks/watch_real_log.py -- --no-lexical --measure dense  # the dense watch, no gate
    python benchmarks/watch_real_log.py --replay DUMP --embedder mpnet --threshold auto --threshold z4

Results: docs/MONITORING.md ("A real log, a plain-words question").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ERROR_LINE = (
    "Oct 16 22:58:11 host kernel: [ 8123.441902] blk_update_request: I/O error, dev nvme1n1, "
    "sector 209715200 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 0"
)
QUESTION = "Is one of the storage drives failing?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log", default="/var/log/apt/term.log", help="the real log to start from")
    p.add_argument("--lines", type=int, default=1200)
    p.add_argument("--depth", type=float, default=0.7, help="where the error goes (0..1)")
    p.add_argument("--question", default=QUESTION)
    p.add_argument(
        "--dump",
        metavar="FILE",
        help="also write every alert (JSON lines, with all its scores) here; with `-- --threshold -1e30 "
        "--cooldown 0 --warmup 0` every segment alerts, so the file holds every segment's signals",
    )
    p.add_argument(
        "--replay",
        metavar="FILE",
        help="no model run: replay a --dump FILE through the watch at each --threshold (fused measure)",
    )
    p.add_argument("--threshold", action="append", help="with --replay: a threshold to replay (repeatable)")
    p.add_argument(
        "--embedder", help="with --replay: the embedder the dump ran with (default: what the dump says, else minilm)"
    )
    p.add_argument("extra", nargs="*", help="options for xl3m-stream watch (after --)")
    args = p.parse_args(argv)
    if args.replay:
        return _replay(args.replay, args.threshold or ["auto"], args.embedder)
    with open(args.log, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()[: args.lines]
    if len(lines) < 10:
        print(f"watch_real_log: {args.log} has fewer than 10 lines", file=sys.stderr)
        return 2
    at = int(len(lines) * args.depth)
    lines.insert(at, ERROR_LINE)
    error_line = at + 1  # 1-based, as the watch numbers lines
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "real.log")
        with open(log, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        cmd = [sys.executable, "-m", "xl3m_stream.cli", "watch", log, "--no-follow", "--jsonl"]
        cmd += ["-q", args.question, *args.extra]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - t0
    if run.returncode != 0:
        print(run.stderr[-2000:], file=sys.stderr)
        return run.returncode
    alerts = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            head = {"error_line": error_line, "question": args.question, "embedder": _embedder(args.extra)}
            f.write(json.dumps(head) + "\n")
            f.writelines(json.dumps(a) + "\n" for a in alerts)
    hits = 0
    for a in alerts:
        first, last = a["meta"]["line_start"], a["meta"]["line_end"]
        hit = first <= error_line <= last
        hits += hit
        mark = "HIT" if hit else ""
        print(f"lines {first}-{last}: {a['measure']} {a['score']:.3f} (threshold {a['threshold']:.3f}) {mark}")
    figures = {
        "question": args.question,
        "options": args.extra,
        "lines": len(lines),
        "error_line": error_line,
        "alerts": len(alerts),
        "hit": hits > 0,
        "false_alerts": len(alerts) - hits,
        "seconds": round(seconds, 1),
    }
    print(json.dumps(figures))
    return 0


def _embedder(extra: list[str]) -> str:
    """The embedder the watch options name (``--embedder X`` or ``--embedder=X``), else the default."""
    for i, option in enumerate(extra):
        if option == "--embedder" and i + 1 < len(extra):
            return extra[i + 1]
        if option.startswith("--embedder="):
            return option.split("=", 1)[1]
    return "minilm"


def _replay(path: str, thresholds: list[str], embedder: str | None) -> int:
    """The fused watch's alerts at each threshold, from a dump of every segment's signals."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from watch_incidents import read_dump, replay

    head, dump = read_dump(path)
    error_line = head["error_line"]
    dumped_with = head.get("embedder")  # dumps before 2026-12-06 did not say
    if embedder and dumped_with and embedder != dumped_with:
        print(f"watch_real_log: the dump ran with {dumped_with!r}, not {embedder!r}", file=sys.stderr)
        return 2
    embedder = embedder or dumped_with or "minilm"
    for threshold in thresholds:
        alerts = replay(dump, threshold=threshold, measure="fused", warmup=None, cooldown=1, embedder=embedder)
        hits = [a for a in alerts if a.meta["line_start"] <= error_line <= a.meta["line_end"]]
        figures = {"threshold": threshold, "segments": len(dump), "alerts": len(alerts), "hit": bool(hits)}
        figures["false_alerts"] = len(alerts) - len(hits)
        figures["at"] = [
            [a.meta["line_start"], a.meta["line_end"], round(a.score, 2), round(a.threshold, 2)] for a in alerts
        ]
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
