"""The command-line front door: ``xl3m-stream ask|demo ...``.

Uses only the public API. Errors a user can cause are printed as one line on stderr with a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

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


# ---------------------------------------------------------------- arguments
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xl3m-stream",
        description="Ask a short-window language model about streams far longer than its window (XL3M).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ask = sub.add_parser("ask", help="answer a question over a file or stdin")
    ask.add_argument("path", metavar="PATH", help="text file to read, or - for stdin")
    ask.add_argument("--question", "-q", required=True, help="the question to answer")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _engine_options(ask)
    ask.set_defaults(func=_cmd_ask)

    demo = sub.add_parser("demo", help="passkey retrieval from a stream of 100k+ tokens (>10x the window)")
    demo.add_argument("--tokens", type=int, default=100_000, help="stream length in tokens (default 100000)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the passkey and its depth")
    demo.add_argument(
        "--depth", type=float, default=None, help="relative depth of the key, 0..1 (default: from the seed)"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _engine_options(demo)
    demo.set_defaults(func=_cmd_demo)
    return p


def _engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", help="scoring model: default alias, directory, .gguf file or HF id")
    g.add_argument("--reader-model", help="answering model (default: the scoring model)")
    g.add_argument("--config", metavar="FILE", help="engine settings from a .toml or .json file")
    g.add_argument("--device", action="append", dest="devices", metavar="DEV", help="cpu, cuda:0, ... (repeatable)")
    g.add_argument("--measure", choices=["entropy", "nll", "gain", "tgain"], help="relevance measure")
    g.add_argument("--segment-tokens", type=int, help="tokens per segment")
    g.add_argument("--context-tokens", type=int, help="key-context budget in tokens")
    g.add_argument("--max-new-tokens", type=int, help="most answer tokens")
    g.add_argument("--batch-size", type=int, help="segments per scoring pass")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--allow-download", action="store_true", default=None, help="fetch HF ids missing locally")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")


def _config(args: argparse.Namespace, **extra: Any) -> Any:
    from .config import EngineConfig

    base = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    base = EngineConfig.from_env(base)
    changes = {
        "model": args.model,
        "reader_model": args.reader_model,
        "devices": args.devices,
        "measure": args.measure,
        "segment_tokens": args.segment_tokens,
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
    from .sources import DecodeStats, read_text

    if not args.question.strip():
        raise InputError("--question must not be empty")
    if args.path != "-":
        _check_input_file(args.path)
    config = _config(args, question=args.question)
    stats = DecodeStats()
    total_bytes = os.path.getsize(args.path) if args.path != "-" else None
    show = _want_progress(args)

    async def run() -> dict[str, Any]:
        from . import Engine

        started = time.perf_counter()
        async with Engine(config) as engine:
            with _Progress(show, total_bytes, "reading") as bar:
                async for chunk in read_text(args.path, stats=stats):
                    await engine.feed(chunk.text)
                    bar.update(stats.bytes_read, engine.stream_tokens)
                await engine.flush()
                bar.update(stats.bytes_read, engine.stream_tokens)
            answer = await engine.ask(args.question)
            return _answer_json(answer, time.perf_counter() - started)

    result = anyio.run(run)
    _report_decoding(stats)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["answer"].strip())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from .errors import InputError
    from .evaluate.metrics import first_int_match
    from .evaluate.tasks import make_sample

    if args.tokens < 1000:
        raise InputError("--tokens must be at least 1000")
    if args.depth is not None and not 0.0 <= args.depth <= 1.0:
        raise InputError("--depth must be between 0 and 1")
    config = _config(args)
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

            sample = make_sample("passkey", length=args.tokens, seed=args.seed, depth=depth, count_tokens=count)
            await engine.set_question(sample.question)
            if not args.json:
                print(
                    f"passkey demo: {args.tokens:,} tokens ({args.tokens / engine.reader_window:.1f}x the "
                    f"{engine.reader_window}-token window of {engine.model_name}), key at depth {depth:.2f}",
                    file=sys.stderr,
                )
            text = sample.context
            step = 1 << 15
            with _Progress(show, len(text), "streaming", unit="chars") as bar:
                for i in range(0, len(text), step):
                    await engine.feed(text[i : i + step])
                    bar.update(min(i + step, len(text)), engine.stream_tokens)
                await engine.flush()
                bar.update(len(text), engine.stream_tokens)
            ingested = time.perf_counter()
            answer = await engine.ask(sample.question)
            result = _answer_json(answer, time.perf_counter() - started)
            result.update(
                expected=sample.answers[0],
                correct=first_int_match(answer.text, sample.answers[0]),
                depth=depth,
                model=engine.model_name,
                window=engine.reader_window,
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
        print(f"  tokens {seg['start']:>8,}-{seg['end']:<8,} score {score}  {snippet}")
    print(
        f"time: {result['seconds']:.1f} s total ({result['load_seconds']:.1f} s loading, "
        f"{result['ingest_seconds']:.1f} s streaming {result['stream_tokens']:,} tokens = "
        f"{result['ingest_tokens_per_s']:.0f} tokens/s, answer {result['ask_seconds']:.1f} s)"
    )
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
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
