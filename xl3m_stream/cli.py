"""The command-line front door: ``xl3m-stream ask|demo ...``.

Uses only the public API. Errors a user can cause are printed as one line on stderr with a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_ERROR = 1
EXIT_USAGE = 2


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


# ---------------------------------------------------------------- arguments
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
    ask.set_defaults(func=_cmd_ask)
    _add_ingest_command(sub)
    _add_watch_command(sub)

    demo = sub.add_parser("demo", help="passkey retrieval from a stream of 100k+ tokens (>10x the window)")
    demo.add_argument("--tokens", type=int, default=100_000, help="stream length in tokens (default 100000)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the passkey and its depth")
    demo.add_argument(
        "--depth", type=float, default=None, help="relative depth of the key, 0..1 (default: from the seed)"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _engine_options(demo)
    demo.set_defaults(func=_cmd_demo)

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
    ev.set_defaults(func=_cmd_eval)
    return p


def _engine_options(p: argparse.ArgumentParser) -> None:
    from .monitor import WATCH_MEASURES

    g = p.add_argument_group("engine")
    g.add_argument("--model", help="scoring model: default alias, directory, .gguf file or HF id")
    g.add_argument(
        "--reader-model",
        help="answering model: alias, directory, .gguf or HF id (default: the catalog reader, else the scorer)",
    )
    g.add_argument("--config", metavar="FILE", help="engine settings from a .toml or .json file")
    g.add_argument("--device", action="append", dest="devices", metavar="DEV", help="cpu, cuda:0, ... (repeatable)")
    g.add_argument(
        "--measure",
        choices=WATCH_MEASURES,
        help="relevance measure (watch only: dense, the question's embedding similarity; fused, the "
        "certainty, BM25 and dense signals each against its own recent values)",
    )
    g.add_argument(
        "--relevance",
        metavar="SIGNALS",
        help="relevance signals, comma-separated: certainty (always), lexical, dense (default: all three)",
    )
    g.add_argument("--segment-tokens", type=int, help="tokens per segment")
    g.add_argument("--segment-overlap", type=int, help="tokens consecutive segments share (0: none)")
    g.add_argument("--context-tokens", type=int, help="key-context budget in tokens")
    g.add_argument("--max-new-tokens", type=int, help="most answer tokens")
    g.add_argument("--batch-size", type=int, help="segments per scoring pass")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--allow-download", action="store_true", default=None, help="fetch HF ids missing locally")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")


def _config(args: argparse.Namespace, **extra: Any) -> Any:
    from .config import EngineConfig

    base = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    if getattr(args, "state_dir", None):
        base = _state_defaults(base, args.state_dir)
    base = EngineConfig.from_env(base)
    changes = {
        "model": args.model,
        "reader_model": args.reader_model,
        "devices": args.devices,
        "measure": args.measure,
        "relevance": [x.strip() for x in args.relevance.split(",") if x.strip()] if args.relevance else None,
        "segment_tokens": args.segment_tokens,
        "segment_overlap": args.segment_overlap,
        "context_tokens": args.context_tokens,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "allow_download": args.allow_download,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    changes.update(extra)
    return base.replace(**changes) if changes else base


# ---------------------------------------------------------------- commands
def _cmd_ask(args: argparse.Namespace) -> int:
    import anyio

    from .errors import InputError
    from .sources import DecodeStats

    if not args.question.strip():
        raise InputError("--question must not be empty")
    if args.path is None and args.state_dir is None:
        raise InputError("give PATH (a text file, or - for stdin) or --state-dir DIR")
    if args.rescan and args.state_dir is None:
        raise InputError("--rescan needs --state-dir (the kept stream it scores)")
    if args.path is None:
        _require_state(args.state_dir)
    elif args.path != "-":
        _check_input_file(args.path)
    config = _config(args, question=args.question, **_state_settings(args))
    stats = DecodeStats()
    show = _want_progress(args)

    async def run() -> dict[str, Any]:
        from . import Engine

        started = time.perf_counter()
        async with Engine(config) as engine:
            _report_recovery(engine)
            if args.path is not None:
                resume = await _feed_input(engine, args, stats, show)
                for note in resume.notes() if resume is not None else []:
                    print(f"xl3m-stream: note: {note}", file=sys.stderr)
            if engine.stream_tokens == 0:
                raise InputError(f"the input is empty{_removed(stats)}: nothing to answer from")
            if args.rescan:
                await engine.rescan(args.question)
            answer = await engine.ask(args.question)
            return _answer_json(answer, time.perf_counter() - started)

    result = anyio.run(run)
    _report_decoding(stats)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["answer"].strip())
    return 0


# ---------------------------------------------------------------- state: ingest, ask --state-dir
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
    ing.set_defaults(func=_cmd_ingest)


def _cmd_ingest(args: argparse.Namespace) -> int:
    import anyio

    from .errors import InputError
    from .sources import DecodeStats

    if args.state_dir is None:
        raise InputError("ingest needs --state-dir DIR (where the stream is kept)")
    if args.question is not None and not args.question.strip():
        raise InputError("--question must not be empty")
    if args.path != "-":
        _check_input_file(args.path)
    extra = {"question": args.question} if args.question else {}
    config = _config(args, **extra, **_state_settings(args))
    stats = DecodeStats()
    show = _want_progress(args)

    async def run() -> dict[str, Any]:
        from . import Engine

        started = time.perf_counter()
        async with Engine(config) as engine:
            _report_recovery(engine)
            before, cut_before = engine.stream_tokens, engine.stats().segments_cut
            resume = await _feed_input(engine, args, stats, show)
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
    _report_decoding(stats)
    for note in result.pop("notes"):
        print(f"xl3m-stream: note: {note}", file=sys.stderr)
    if result["tokens_added"] == 0 and not result["resumed_at_char"]:
        print(f"xl3m-stream: note: the input was empty{_removed(stats)}: nothing was added", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(
            f"ingested {result['tokens_added']:,} tokens ({result['segments_added']:,} segments) into "
            f"{result['state_dir']}; the stream now holds {result['stream_tokens']:,} tokens"
        )
    return 0


async def _feed_input(engine: Any, args: argparse.Namespace, stats: Any, show: bool) -> _Resume | None:
    """Feed PATH (or stdin) to the engine, as text or as JSON-lines records, then flush.

    With a state directory a file is resumed (see :class:`_Resume`); the resume is returned.
    """
    from contextlib import aclosing

    from .sources import jsonl_records, read_lines, read_text

    total = os.path.getsize(args.path) if args.path != "-" else None
    if args.jsonl:
        source = jsonl_records(read_lines(args.path, stats=stats), stats=stats)
    else:
        source = read_text(args.path, stats=stats)
    resume = _Resume(engine, args) if engine.recovery is not None and args.path != "-" else None
    with _Progress(show, total, "reading") as bar:
        async with aclosing(source) as chunks:
            async for chunk in chunks:
                if resume is not None and (chunk := await resume.take(chunk)) is None:
                    continue  # the state already holds it
                await engine.feed(chunk)
                bar.update(stats.bytes_read, engine.stream_tokens)
        if resume is not None:
            await resume.finish()
        await engine.flush()
        bar.update(stats.bytes_read, engine.stream_tokens)
    return resume


class _Resume:
    """Where a file being fed into a state directory starts, so that an ingest killed midway and
    run again (or run again on a file that has grown) takes each character of it once.

    Marks in the log (``Engine.mark_input``) name the file (format, real path, device, inode),
    say how many characters of its text the stream held and hash them. The file is read again
    from its start through the same decoding, so its text is the same, and the characters the
    state holds are skipped after checking their hash; what follows is fed. A file rewritten
    since (the hash differs, or it is shorter) is refused unless ``--from-start``.
    """

    def __init__(self, engine: Any, args: argparse.Namespace) -> None:
        import hashlib

        st = os.stat(args.path)
        self.engine = engine
        self.path = args.path
        self.source = f"{'jsonl' if args.jsonl else 'text'}:{os.path.realpath(args.path)} ({st.st_dev}:{st.st_ino})"
        mark, taken = engine.input_resume(self.source) if not args.from_start else (None, 0)
        self.previous = mark
        self.skip = taken
        """Characters of the file's text the state holds."""
        self.seen = 0  # characters of the file's text read so far
        self.fed = False
        self._hash = hashlib.sha256()
        self._skip_digest = ""
        checks = [(self.skip, self._at_skip)]
        if self.previous is not None and self.previous.digest:
            checks.append((self.previous.taken, self._verify))
        self._checks = sorted(checks, key=lambda check: check[0])
        self._run_checks(0)

    async def take(self, chunk: Any) -> Any:
        """``chunk`` or its part the state does not hold yet (None: it holds all of it)."""
        from .sources import TextChunk

        text = chunk.text
        start = self.seen
        self.seen += len(text)
        at = start
        while self._checks and self._checks[0][0] <= self.seen:
            point = self._checks[0][0]
            self._hash.update(text[at - start : point - start].encode("utf-8", "surrogatepass"))
            at = point
            self._run_checks(point)
        self._hash.update(text[at - start :].encode("utf-8", "surrogatepass"))
        if self.seen <= self.skip:
            return None
        if not self.fed:
            self.fed = True
            await self.engine.mark_input(self.source, self.skip, digest=self._skip_digest)
        if start >= self.skip:
            return chunk
        return TextChunk(text=text[self.skip - start :], meta=chunk.meta)

    def _run_checks(self, point: int) -> None:
        while self._checks and self._checks[0][0] == point:
            self._checks.pop(0)[1]()

    def _verify(self) -> None:
        from .errors import InputError

        assert self.previous is not None
        if self._hash.hexdigest() != self.previous.digest:
            raise InputError(
                f"{self.path} changed since it was ingested into this state (its first {self.previous.taken:,} "
                f"characters differ from those taken): nothing was added; use --from-start to take it again"
            )

    def _at_skip(self) -> None:
        self._skip_digest = self._hash.hexdigest()

    async def finish(self) -> None:
        """At the end of the file: refuse one shorter than what the state holds; mark it complete."""
        from .errors import InputError

        if self.seen < self.skip:
            raise InputError(
                f"{self.path} holds {self.seen:,} characters, fewer than the {self.skip:,} this state already took "
                f"from it (truncated or replaced): nothing was added; use --from-start to take it again"
            )
        if self.fed or self.previous is None or not self.previous.complete:
            await self.engine.mark_input(self.source, self.seen, complete=True, digest=self._hash.hexdigest())

    def notes(self) -> list[str]:
        """What a user should know about where the file was resumed."""
        if self.previous is None or not self.skip:
            return []
        if not self.fed:
            return [f"nothing new in {self.path}: the state already holds all of it"]
        if self.previous.complete:
            return [
                f"took only what was appended to {self.path} since it was last ingested (from character {self.skip:,})"
            ]
        return [f"resumed {self.path} at character {self.skip:,}, where an earlier run on it stopped"]


def _state_settings(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        out["state_dir"] = args.state_dir
    if getattr(args, "fsync", None):
        out["fsync"] = args.fsync
    return out


def _state_defaults(base: Any, state_dir: str) -> Any:
    """Settings recorded in an existing state (its model, its segment layout) for those left at
    their defaults: ``ask --state-dir DIR`` needs no more options than the ingest had."""
    from .config import EngineConfig
    from .persistence import read_meta

    meta = read_meta(state_dir)
    if meta is None:
        return base
    default = EngineConfig()
    recorded = {
        "model": meta.model,
        "segment_tokens": meta.layout.segment_tokens,
        "segment_overlap": meta.layout.segment_overlap,
        "segment_cut": meta.layout.segment_cut,
    }
    changes = {k: v for k, v in recorded.items() if getattr(base, k) == getattr(default, k)}
    return base.replace(**changes) if changes else base


def _require_state(state_dir: str) -> None:
    from .errors import InputError
    from .persistence import read_meta

    if read_meta(state_dir) is None:
        raise InputError(f"no xl3m-stream state in {state_dir}: run `xl3m-stream ingest PATH --state-dir DIR` first")


def _report_recovery(engine: Any) -> None:
    report = engine.recovery
    if report is not None:
        for note in report.notes():
            print(f"xl3m-stream: note: {note}", file=sys.stderr)


def _removed(stats: Any) -> str:
    """What decoding took out of an input that ended up empty, for the message saying so."""
    parts = [(stats.nul_removed, "NUL byte(s) removed"), (stats.skipped_records, "record(s) skipped")]
    removed = [f"{n} {what}" for n, what in parts if n]
    return f" ({', '.join(removed)})" if removed else ""


# ---------------------------------------------------------------- watch
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
        "their mean (e.g. z4); a number: an absolute score (default z2)",
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
    w.set_defaults(func=_cmd_watch)


def seconds(text: str) -> float:
    """A duration argument: a finite number of seconds >= 0 (not nan, not inf)."""
    value = float(text)  # (argparse says "invalid seconds value" when it is not a number)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def _cmd_watch(args: argparse.Namespace) -> int:
    import anyio

    from .errors import InputError
    from .monitor import DEFAULT_WATCH_MEASURE, SIGNAL_MEASURES, Monitor

    questions = list(args.questions)
    if any(not q.strip() for q in questions):
        raise InputError("--question must not be empty")
    if args.path != "-" and not args.follow:
        _check_input_file(args.path)
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
    Monitor().add(questions[0], **options)  # check the options before loading a model
    engine_measure = {"measure": measure}
    if measure in SIGNAL_MEASURES:  # a watch's signal only: the engine keeps its certainty measure
        args.measure, engine_measure = None, {}
    config = _config(args, question=questions[0], segment_cut="lines", **engine_measure)
    try:
        result = anyio.run(_watch, args, questions, options, config)
    except Exception as exc:  # a failure inside the pipeline's task group: report the error itself
        raise _first_error(exc) from None
    if result["broken_pipe"]:  # the reader of our output went away (`| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    _report_decoding(result["decoding"])
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

    from . import Alert, Engine, EventsDropped
    from .sources import DecodeStats, follow, jsonl_records, read_lines

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
            fed = False  # tokens fed since the last flush
            async with receive:
                while True:
                    chunk = None
                    with anyio.move_on_after(args.flush_after or math.inf):
                        try:
                            chunk = await receive.receive()
                        except anyio.EndOfStream:
                            break
                    if chunk is None:  # the log is quiet: score what is pending now
                        if fed:
                            await engine.flush()
                            fed = False
                        continue
                    await engine.feed(chunk)
                    fed = True
            await engine.flush()
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

    from .sources import TextChunk, parse_log_line

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


def _cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from .demo import passkey_document
    from .errors import InputError
    from .evaluate.metrics import first_int_match
    from .tokenizer import IncrementalTokenizer

    if args.tokens < 1000:
        raise InputError("--tokens must be at least 1000")
    if args.depth is not None and not 0.0 <= args.depth <= 1.0:
        raise InputError("--depth must be between 0 and 1")
    config = _config(args)
    if args.max_new_tokens is None:  # the key is a number: a few tokens answer it
        import msgspec

        config = msgspec.structs.replace(config, max_new_tokens=16)
    show = _want_progress(args)

    async def run() -> dict[str, Any]:
        from . import Engine

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
            done = 0
            with _Progress(show, doc.chars, "streaming", unit="chars") as bar:
                for piece in doc.pieces(1 << 15):
                    await engine.feed(piece)
                    done += len(piece)
                    bar.update(done, engine.stream_tokens)
                await engine.flush()
                bar.update(doc.chars, engine.stream_tokens)
            ingested = time.perf_counter()
            answer = await engine.ask(doc.question)
            result = _answer_json(answer, time.perf_counter() - started)
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


def _cmd_eval(args: argparse.Namespace) -> int:
    import anyio
    import msgspec

    from .evaluate.runner import EvalConfig, run_eval

    cfg = EvalConfig(
        tasks=args.tasks or ["passkey"],
        lengths=args.lengths or [32_000],
        samples=args.samples,
        methods=args.methods or ["xl3m", "truncate"],
        seed=args.seed,
        depths=args.depths,
        haystack_files=args.haystack,
        corpus=args.corpus,
        scoring_question_tokens=args.scoring_question_tokens,
        read=args.read,
        keep_signals=args.keep_signals,
        engine=_config(args),
    )
    for f in [*cfg.haystack_files, *cfg.corpus]:
        _check_input_file(f)
    show = _want_progress(args)

    def progress(message: str) -> None:
        if show or not args.json:
            print(f"eval: {message}", file=sys.stderr, flush=True)

    report = anyio.run(lambda: run_eval(cfg, progress=progress))
    if args.report:
        from .evaluate.report import write_report

        for path in write_report(report, args.report):
            progress(f"wrote {path}")
    if args.json:
        print(json.dumps(msgspec.to_builtins(report)))
        return 0
    from .evaluate.report import markdown_table

    print(f"model {report.model}, window {report.window:,} tokens; {report.machine}; {report.seconds:.0f} s")
    print(markdown_table(report.results, report.window))
    return 0


# ---------------------------------------------------------------- helpers
def _answer_json(answer: Any, seconds: float) -> dict[str, Any]:
    return {
        "answer": answer.text,
        "question": answer.question,
        "segments": [
            {"start": s.start, "end": s.end, "score": s.score, "text": s.text, **({"local": True} if s.local else {})}
            for s in answer.segments
        ],
        "stream_tokens": answer.stream_tokens,
        "seconds": round(seconds, 3),
        "ask_seconds": round(answer.timings.total_s, 3),
    }


def _check_input_file(path: str) -> None:
    from .errors import InputError

    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input is a directory, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file is not readable: {path}")


def _report_decoding(stats: Any) -> None:
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


def _want_progress(args: argparse.Namespace) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


class _Progress:
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

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


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
