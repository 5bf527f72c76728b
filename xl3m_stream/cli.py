"""The command-line front door: ``xl3m-stream ask|ingest|watch|serve|demo|eval ...``.

``main`` and the parser; the commands are in :mod:`xl3m_stream._cli`.

Uses only the public API. Errors a user can cause are printed as one line on stderr with a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ._cli import EXIT_ERROR, EXIT_USAGE
from ._cli.ask import cmd_ask
from ._cli.demo import cmd_demo
from ._cli.eval import cmd_eval
from ._cli.ingest import cmd_ingest
from ._cli.serve import add_serve_command
from ._cli.watch import cmd_watch

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "main", "seconds"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _quiet_libraries(args.verbose)
    from .errors import Xl3mError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("xl3m-stream: interrupted", file=sys.stderr)
        return 130
    except (Xl3mError, OSError) as exc:
        print(f"xl3m-stream: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # a bug, or a library failing in a way we did not foresee: still one line
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"xl3m-stream: error: unexpected {type(exc).__name__}: {_one_line(exc)} (-v shows more)", file=sys.stderr)
        return EXIT_ERROR


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``xl3m-stream: error: ...``), like every other error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # "ask" in "xl3m-stream ask"
        self.exit(EXIT_USAGE, f"xl3m-stream: error: {command + ': ' if command else ''}{message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="xl3m-stream",
        description="Ask a short-window language model about streams far longer than its window (XL3M).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ask = sub.add_parser("ask", help="answer a question over a file or stdin, or over a --state-dir")
    ask.add_argument("path", metavar="PATH", nargs="?", help="text file, or - for stdin (optional with --state-dir)")
    ask.add_argument("--question", "-q", required=True, help="the question to answer")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _input_options(ask)
    _engine_options(ask)
    ask.set_defaults(func=cmd_ask)
    _add_ingest_command(sub)
    _add_watch_command(sub)
    add_serve_command(sub, _engine_options, seconds)

    demo = sub.add_parser("demo", help="passkey retrieval from a stream of 100k+ tokens (>10x the window)")
    demo.add_argument("--tokens", type=int, default=100_000, help="stream length in tokens (default 100000)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the passkey and its depth")
    demo.add_argument(
        "--depth", type=float, default=None, help="relative depth of the key, 0..1 (default: from the seed)"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _engine_options(demo)
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="measure accuracy and selection on generated long-context tasks")
    ev.add_argument(
        "--task",
        action="append",
        dest="tasks",
        help="passkey, needle, multikey, multivalue, vartrack, logs; "
        "on real text: prose-lexical, prose-paraphrase, log-real",
    )
    ev.add_argument("--length", action="append", dest="lengths", type=int, help="stream length in tokens (repeatable)")
    ev.add_argument("--samples", type=int, default=5, help="samples per task and length (default 5)")
    ev.add_argument("--method", action="append", dest="methods", help="xl3m, xl3m-entropy, ..., bm25, embed, full")
    ev.add_argument("--depth", action="append", dest="depths", type=float, help="needle depths to cycle (0..1)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--first-sample",
        type=int,
        default=0,
        metavar="I",
        help="run samples I .. I+N-1 of the seed (as a run from 0 would), to split a long evaluation",
    )
    ev.add_argument("--haystack", action="append", default=[], metavar="FILE", help="prose files for the haystack")
    ev.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="PATH",
        help="real text for the real-text tasks (.txt, .md, .log, .gz; default: this machine's manuals and logs)",
    )
    ev.add_argument("--scoring-question-tokens", type=int, help="score with the last N tokens of stream+question")
    ev.add_argument(
        "--read",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the reader (--no-read: selection only, accuracy not measured; much faster)",
    )
    ev.add_argument(
        "--keep-signals",
        action="store_true",
        help="keep every segment's signal values in the xl3m results (for benchmarks/fusion_offline.py)",
    )
    ev.add_argument("--json", action="store_true", help="print one JSON object with the results")
    ev.add_argument("--report", metavar="DIR", help="also write results.json, results.md and PNG heatmaps here")
    _engine_options(ev)
    ev.set_defaults(func=cmd_eval)
    return p


def _engine_options(p: argparse.ArgumentParser) -> None:
    from .monitor import WATCH_MEASURES

    g = p.add_argument_group("engine")
    g.add_argument("--model", help="scoring model: default alias, directory, .gguf file or HF id")
    g.add_argument(
        "--reader-model",
        help="answering model: alias, directory, .gguf or HF id (default: the catalog reader, else the scorer)",
    )
    g.add_argument(
        "--reader-base-url",
        metavar="URL",
        help="with --reader-model openai:MODEL, the server's API root, e.g. http://127.0.0.1:8080/v1 (default: "
        "$OPENAI_BASE_URL); the key comes from $OPENAI_API_KEY (not an option: command lines are visible to others)",
    )
    g.add_argument("--config", metavar="FILE", help="engine settings from a .toml or .json file")
    g.add_argument("--device", action="append", dest="devices", metavar="DEV", help="cpu, cuda:0, ... (repeatable)")
    g.add_argument(
        "--measure",
        choices=WATCH_MEASURES,
        help="relevance measure (watch only: dense, the question's embedding similarity; fused, the "
        "certainty, BM25 and dense signals each against its own recent values, the two strongest summed)",
    )
    g.add_argument(
        "--relevance",
        metavar="SIGNALS",
        help="relevance signals, comma-separated: certainty (always), lexical, dense (default: all three)",
    )
    g.add_argument(
        "--embedder",
        help="the dense signal's embedder: minilm (default), mpnet (slower, finds more paraphrases) or a directory",
    )
    g.add_argument("--segment-tokens", type=int, help="tokens per segment")
    g.add_argument(
        "--segment-overlap",
        type=_overlap,
        help="tokens consecutive segments share: a number (0: none) or auto (a state dir's, else segment/8)",
    )
    g.add_argument("--context-tokens", type=int, help="key-context budget in tokens")
    g.add_argument("--max-new-tokens", type=int, help="most answer tokens")
    g.add_argument("--batch-size", type=int, help="segments per scoring pass")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--backend", choices=["local", "ray"], help="where scoring runs: here (local) or in Ray actors")
    g.add_argument(
        "--ray-address", metavar="ADDR", help="with --backend ray, the cluster to join (default: start a local Ray)"
    )
    g.add_argument(
        "--workers", type=int, metavar="N", help="with --backend ray, scoring actors (default: one per GPU, else 1)"
    )
    g.add_argument("--allow-download", action="store_true", default=None, help="fetch HF ids missing locally")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")


def _overlap(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or auto, got {value!r}") from None


def _input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input and state")
    g.add_argument("--state-dir", metavar="DIR", help="keep the stream in DIR (log + snapshots) and resume from it")
    g.add_argument("--jsonl", action="store_true", help="the input is JSON-lines log records (malformed ones skipped)")
    g.add_argument(
        "--from-start",
        action="store_true",
        help="with --state-dir: take the whole file again, even if the state already holds (part of) it",
    )
    if p.prog.endswith(" ask"):
        g.add_argument(
            "--rescan", action="store_true", help="with --state-dir: score the whole kept stream against the question"
        )


def _add_ingest_command(sub: Any) -> None:
    ing = sub.add_parser(
        "ingest",
        help="consume a file or stdin into a --state-dir (resumable; ask it later)",
        description="Read PATH (or - for stdin) into the stream kept in --state-dir: every piece is logged "
        "before it is acknowledged, segments are scored and the best kept. Run it again to append more: a file "
        "is resumed where the state stops (after a crash, or once the file has grown) and each of its characters "
        "is taken once; stdin is appended as it comes. `xl3m-stream ask --state-dir DIR -q ...` answers from the "
        "state alone.",
    )
    ing.add_argument("path", metavar="PATH", help="text file to read, or - for stdin")
    ing.add_argument("--question", "-q", help="standing question to score segments against (default: rolling)")
    ing.add_argument("--fsync", choices=["always", "interval", "never"], help="when the log reaches the disk")
    ing.add_argument("--json", action="store_true", help="print one JSON object with the outcome")
    _input_options(ing)
    _engine_options(ing)
    ing.set_defaults(func=cmd_ingest)


def _add_watch_command(sub: Any) -> None:
    w = sub.add_parser(
        "watch",
        help="watch a log with standing questions and print alerts",
        description="Score every segment of a log against standing questions and print an alert for each "
        "segment whose relevance crosses the threshold. A file is followed like tail -F (appends, truncation, "
        "rotation) until interrupted; - reads stdin to its end.",
    )
    w.add_argument("path", metavar="PATH", help="log file to follow, or - for stdin")
    w.add_argument(
        "--question", "-q", action="append", dest="questions", required=True, help="a standing question (repeatable)"
    )
    w.add_argument(
        "--threshold",
        help="pNN: above the NN-th percentile of recent scores (e.g. p99.5); zN: N standard deviations above "
        "their mean (e.g. z4); a number: an absolute score; auto (default): the threshold measured for the "
        "measure (z2 with the lexical gate, z4 without, z5.625 for fused)",
    )
    w.add_argument("--warmup", type=int, help="segments observed before the first alert (default: from the threshold)")
    w.add_argument("--cooldown", type=int, help="no new alert within N segments of the last crossing (default 1)")
    w.add_argument("--min-score", type=float, help="an alert also needs at least this score")
    w.add_argument(
        "--min-overlap",
        type=float,
        help="lexical gate: share of the question's (idf-weighted) words an alerting segment holds (default 0.2)",
    )
    w.add_argument(
        "--no-lexical", action="store_true", help="no lexical gate: the model's relevance alone (then e.g. z4)"
    )
    w.add_argument("--explain", action="store_true", help="add the model's short answer from the alerting segment")
    w.add_argument("--jsonl", action="store_true", help="print one JSON object per alert")
    w.add_argument("--format", choices=["text", "jsonl"], default="text", help="input: log lines or JSON-lines records")
    w.add_argument("--message-field", default="message", help="message field of JSON-lines records (default message)")
    w.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep following the file like tail -F (default); --no-follow stops at its end",
    )
    w.add_argument("--from-end", action="store_true", help="start at the end of the file (only new lines)")
    w.add_argument(
        "--idle-timeout", type=seconds, metavar="SECONDS", help="stop following after this long without data"
    )
    w.add_argument(
        "--flush-after",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="score a partial segment once the log has been quiet this long (default 2; 0: never)",
    )
    _engine_options(w)
    w.set_defaults(func=cmd_watch)


def seconds(text: str) -> float:
    """A duration argument: a finite number of seconds >= 0 (not nan, not inf)."""
    value = float(text)  # (argparse says "invalid seconds value" when it is not a number)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    logging.basicConfig(level=logging.WARNING, format="xl3m-stream: %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # libraries that set their own loggers to DEBUG stay quiet
        handler.setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("bm25s", "sentence_transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())[:500]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
