"""Monitoring benchmark: does ``xl3m-stream watch`` alert on injected incidents, and only on them?

Generates a synthetic service log (seeded; at least ``--tokens`` tokens of the scoring model)
with incidents injected at known lines: ``--questions`` incident kinds occur ``--repeats``
times each and are watched, each with its question ("Which service reported the disk
failure?"); ``--distractors`` other kinds occur once and nobody asks about them. Then it
runs the real command line, ``xl3m-stream watch LOG --no-follow --jsonl --question ...``,
in a subprocess, and scores its alerts:

* an alert is *true* when its segment (its ``line_start``..``line_end``) holds a line of an
  incident of the alert's own question; any other alert is false;
* an incident is *detected* when a true alert covers one of its lines.

precision = true alerts / alerts; recall = detected incidents / watched incidents. The last
line printed is one JSON object with every figure. The watch settings default to the
library's (``--measure nll --threshold auto --min-overlap auto --cooldown 1``: the lexical
gate is 0.2 for a certainty measure and off for ``dense`` and ``fused``; ``auto`` is the
threshold measured for the measure, its gate and the embedder, z2 here); ``--no-lexical``
turns the gate off, ``--min-overlap X`` sets it. Results and how the defaults were chosen: docs/MONITORING.md.

Tuning without peeking: ``--dump FILE`` runs the same command with a threshold no score
misses (every segment alerts for every question: all scores, all measures), and
``--replay FILE`` evaluates any ``--threshold`` / ``--measure`` / ``--warmup`` /
``--cooldown`` on such a dump with the same :class:`~xl3m_stream.monitor.Monitor` the engine
uses, in seconds. Tune on dumps of other seeds; report the held-out seed's live run.

    python benchmarks/watch_incidents.py --tokens 200000 --seed 2024      # the reported figure
    python benchmarks/watch_incidents.py --tokens 200000 --seed 11 --dump /tmp/seed11.jsonl
    python benchmarks/watch_incidents.py --replay /tmp/seed11.jsonl --threshold z5
    python benchmarks/watch_incidents.py --replay /tmp/seed11.jsonl --measure fused --threshold z4.5 --embedder mpnet

A dump records the embedder it ran with; ``--replay`` picks ``auto``'s fused threshold for
it (or for ``--embedder``, whose dense scores then replace the dump's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model

from xl3m_stream.evaluate import haystack as hs
from xl3m_stream.events import Alert
from xl3m_stream.monitor import (
    AUTO,
    DEFAULT_COOLDOWN,
    DEFAULT_MIN_OVERLAP,
    DEFAULT_WATCH_MEASURE,
    Monitor,
)

DUMP_THRESHOLD = "-1e30"
"""An absolute threshold every score passes: the dump records every (question, segment) score."""


class Truth(msgspec.Struct, frozen=True, kw_only=True):
    """What was injected where (written next to the log, read back by ``--replay``)."""

    seed: int
    tokens: int
    lines: int
    questions: list[str]
    incidents: list[dict[str, Any]]
    """``{"kind", "question", "service", "lines", "watched"}`` per occurrence."""


# --------------------------------------------------------------------------------------
# the log


def count_tokens_fn(model: str) -> Any:
    """Token counter of the scoring model's tokenizer (no weights loaded)."""
    from xl3m_stream import models

    tokenizer = models.load_tokenizer(models.resolve(model))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def make_log(seed: int, tokens: int, count: Any, *, questions: int, repeats: int, distractors: int) -> Any:
    """An incident log of at least ``tokens`` tokens (deterministic for seed and length)."""
    n_lines = max(200, tokens // 40)
    while True:
        log = hs.incident_log(random.Random(seed), n_lines, watched=questions, repeats=repeats, distractors=distractors)
        have = count(log.text)
        if have >= tokens:
            return log, have
        n_lines = math.ceil(n_lines * tokens / have * 1.01) + 1


def truth_of(log: Any, seed: int, tokens: int) -> Truth:
    return Truth(
        seed=seed,
        tokens=tokens,
        lines=len(log.lines),
        questions=log.questions,
        incidents=[
            {
                "kind": inc.incident.kind,
                "question": inc.incident.question,
                "service": inc.service,
                "lines": list(inc.lines),
                "watched": inc.watched,
            }
            for inc in log.incidents
        ],
    )


# --------------------------------------------------------------------------------------
# scoring alerts against the truth


def evaluate(alerts: Sequence[Alert], truth: Truth) -> dict[str, Any]:
    """Precision, recall and a per-question breakdown of ``alerts``."""
    lines_of: dict[str, list[tuple[int, set[int]]]] = defaultdict(list)
    for k, inc in enumerate(truth.incidents):
        if inc["watched"]:
            lines_of[inc["question"]].append((k, set(inc["lines"])))
    detected: set[int] = set()
    true_alerts = 0
    per_q = {q: {"alerts": 0, "true": 0, "incidents": 0, "detected": 0} for q in truth.questions}
    for alert in alerts:
        meta = alert.meta or {}
        lo, hi = meta.get("line_start"), meta.get("line_end")
        row = per_q.setdefault(alert.question, {"alerts": 0, "true": 0, "incidents": 0, "detected": 0})
        row["alerts"] += 1
        if lo is None or hi is None:
            continue
        hit = [k for k, lines in lines_of.get(alert.question, []) if any(lo <= n <= hi for n in lines)]
        if hit:
            true_alerts += 1
            row["true"] += 1
            detected.update(hit)
    watched = [k for k, inc in enumerate(truth.incidents) if inc["watched"]]
    for k in watched:
        row = per_q[truth.incidents[k]["question"]]
        row["incidents"] += 1
        row["detected"] += k in detected
    n = len(alerts)
    return {
        "alerts": n,
        "true_alerts": true_alerts,
        "false_alerts": n - true_alerts,
        "incidents": len(watched),
        "detected": len(detected),
        "precision": true_alerts / n if n else 1.0,
        "recall": len(detected) / len(watched) if watched else 1.0,
        "per_question": per_q,
    }


def replay(
    dump: Sequence[Alert],
    *,
    threshold: str,
    measure: str,
    warmup: int | None,
    cooldown: int,
    min_overlap: float | str | None = AUTO,
    embedder: str = "minilm",
) -> list[Alert]:
    """The alerts a watch with these settings would have raised, from a dump of every score.

    Feeds each question's scores to a :class:`Monitor` in stream order, as the engine does;
    ``embedder`` is the one whose dense scores these are (it picks ``auto``'s fused threshold).
    """
    by_q: dict[str, list[Alert]] = defaultdict(list)
    for a in dump:
        by_q[a.question].append(a)
    out = []
    for question, rows in by_q.items():
        monitor = Monitor(embedder)
        watch = monitor.add(
            question, threshold=threshold, measure=measure, warmup=warmup, cooldown=cooldown, min_overlap=min_overlap
        )
        for a in sorted(rows, key=lambda a: a.seq):
            decision = monitor.observe(watch.id, a.seq, a.scores, a.text)
            if decision.alert:
                out.append(
                    msgspec.structs.replace(
                        a, score=decision.score, threshold=decision.threshold, overlap=decision.overlap
                    )
                )
    return sorted(out, key=lambda a: (a.seq, a.question))


# --------------------------------------------------------------------------------------
# running the command line


def run_watch(
    log_path: Path, questions: Sequence[str], args: argparse.Namespace, *, dump: bool
) -> tuple[list[Alert], float, str]:
    """Run ``xl3m-stream watch`` on the log; return its alerts, wall time and stderr."""
    cmd = [sys.executable, "-m", "xl3m_stream.cli", "watch", str(log_path), "--no-follow", "--jsonl"]
    for q in questions:
        cmd += ["--question", q]
    cmd += ["--model", args.model, "--segment-tokens", str(args.segment_tokens), "--batch-size", str(args.batch_size)]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    for dev in args.device or []:
        cmd += ["--device", dev]
    if args.embedder:
        cmd += ["--embedder", args.embedder]
    if dump:
        # a fused watch computes every signal (the certainty measures, BM25, dense): any measure replays
        cmd += [
            f"--threshold={DUMP_THRESHOLD}",
            "--warmup",
            "0",
            "--cooldown",
            "0",
            "--no-lexical",
            "--measure",
            "fused",
        ]
    else:
        cmd += [f"--threshold={args.threshold}", "--cooldown", str(args.cooldown), "--measure", args.measure]
        if args.warmup is not None:
            cmd += ["--warmup", str(args.warmup)]
        if args.min_overlap is None:
            cmd += ["--no-lexical"]
        elif args.min_overlap != AUTO:  # auto: the command's own default for the measure
            cmd += ["--min-overlap", str(args.min_overlap)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"watch_incidents: `xl3m-stream watch` failed with exit status {proc.returncode}")
    decoder = msgspec.json.Decoder(Alert)
    alerts = [decoder.decode(line) for line in proc.stdout.splitlines() if line.strip()]
    return alerts, seconds, proc.stderr


# --------------------------------------------------------------------------------------
# main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=200_000, help="log length in tokens, at least (default 200000)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the log (default 2024, the held-out seed)")
    p.add_argument("--questions", type=int, default=6, help="incident kinds watched (default 6)")
    p.add_argument("--repeats", type=int, default=2, help="occurrences of each watched incident (default 2)")
    p.add_argument("--distractors", type=int, default=3, help="unwatched incident kinds, once each (default 3)")
    p.add_argument("--model", default="default", help="scoring model (default: the library's default)")
    p.add_argument("--segment-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--device", action="append", help="cpu, cuda:0, ... (default: the engine's)")
    p.add_argument(
        "--threshold",
        default=AUTO,
        help="watch threshold (default auto, the library's: measured for the measure, its gate and the embedder)",
    )
    p.add_argument("--measure", default=DEFAULT_WATCH_MEASURE, help=f"watch measure (default {DEFAULT_WATCH_MEASURE})")
    p.add_argument("--warmup", type=int, help="warm-up segments (default: the threshold's)")
    p.add_argument("--cooldown", type=int, default=DEFAULT_COOLDOWN)
    p.add_argument(
        "--min-overlap",
        type=lambda v: v if v == AUTO else float(v),
        default=AUTO,
        help=f"lexical gate (default auto, the library's: {DEFAULT_MIN_OVERLAP} for certainty measures, "
        "none for dense and fused)",
    )
    p.add_argument("--no-lexical", dest="min_overlap", action="store_const", const=None, help="no lexical gate")
    p.add_argument("--out", help="keep the log, its truth and the alerts in this folder")
    p.add_argument("--dump", metavar="FILE", help="record every score (JSON lines) instead of alerting")
    p.add_argument(
        "--embedder",
        help="the dense signal's embedder (minilm, mpnet, a directory; default the library's); with --replay, "
        "the dump's dense scores are recomputed with it on the same texts",
    )
    p.add_argument("--replay", metavar="FILE", help="evaluate the settings on a --dump file (no model run)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.replay:
        return _main_replay(args)
    count = count_tokens_fn(args.model)
    started = time.perf_counter()
    log, tokens = make_log(
        args.seed, args.tokens, count, questions=args.questions, repeats=args.repeats, distractors=args.distractors
    )
    truth = truth_of(log, args.seed, tokens)
    print(
        f"log: {tokens:,} tokens, {len(log.lines):,} lines, {len(truth.incidents)} incidents "
        f"({sum(i['watched'] for i in truth.incidents)} watched, {len(truth.questions)} questions); "
        f"generated in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="watch-incidents-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "incidents.log"
        log_path.write_text(log.text, encoding="utf-8")
        (folder / "truth.json").write_bytes(msgspec.json.encode(truth))
        alerts, seconds, stderr = run_watch(log_path, truth.questions, args, dump=bool(args.dump))
        if args.dump:
            with open(args.dump, "wb") as f:
                head = {
                    "truth": truth,
                    "model": args.model,
                    "segment_tokens": args.segment_tokens,
                    "embedder": args.embedder or "minilm",
                }
                f.write(msgspec.json.encode(head) + b"\n")
                for a in alerts:
                    f.write(msgspec.json.encode(a) + b"\n")
            print(f"dumped {len(alerts):,} scores to {args.dump} in {seconds:.1f} s", file=sys.stderr)
            summary = {"dump": args.dump, "scores": len(alerts), "seconds": round(seconds, 1), "tokens": tokens}
            print(json.dumps(summary))
            return 0
        if args.out:
            (folder / "alerts.jsonl").write_bytes(b"".join(msgspec.json.encode(a) + b"\n" for a in alerts))
    result = evaluate(alerts, truth)
    _report(result, truth, args, seconds=seconds, tokens=tokens, stderr=stderr)
    return 0


def read_dump(path: str) -> tuple[dict[str, Any], list[Alert]]:
    """A ``--dump`` file: its first line (what the run was), then every alert it recorded."""
    with open(path, "rb") as f:
        head = msgspec.json.decode(f.readline())
        decoder = msgspec.json.Decoder(Alert)
        return head, [decoder.decode(line) for line in f if line.strip()]


def _main_replay(args: argparse.Namespace) -> int:
    head, dump = read_dump(args.replay)
    truth = msgspec.convert(head["truth"], Truth)
    args.model, args.segment_tokens = head.get("model"), head.get("segment_tokens")
    dumped_with = head.get("embedder") or "minilm"  # dumps before 2026-12-05 did not say (mpnet ones: pass it)
    if args.embedder:
        dump = with_dense_from(dump, args.embedder)
    alerts = replay(
        dump,
        threshold=args.threshold,
        measure=args.measure,
        warmup=args.warmup,
        cooldown=args.cooldown,
        min_overlap=args.min_overlap,
        embedder=args.embedder or dumped_with,
    )
    if not args.embedder:
        args.embedder = dumped_with
    result = evaluate(alerts, truth)
    _report(result, truth, args, seconds=None, tokens=truth.tokens, stderr="")
    return 0


def with_dense_from(dump: list[Alert], embedder: str) -> list[Alert]:
    """The dump with its ``dense`` scores recomputed by another embedder, as the engine computes
    them (each segment's best passage cosine to the question, float32), on the same texts."""
    from xl3m_stream.embedding import Embedder, embedder_dir
    from xl3m_stream.relevance import passage_similarity

    model = Embedder(embedder_dir(embedder), dtype="float32").load()
    texts = {a.seq: a.text for a in dump}
    seqs = sorted(texts)
    passages = dict(zip(seqs, model.encode_passages([texts[s] for s in seqs])))
    questions = {q: model.encode([q])[0] for q in {a.question for a in dump}}
    return [
        msgspec.structs.replace(
            a, scores={**a.scores, "dense": passage_similarity(questions[a.question], [passages[a.seq]])[0]}
        )
        for a in dump
    ]


def _report(
    result: dict[str, Any], truth: Truth, args: argparse.Namespace, *, seconds: float | None, tokens: int, stderr: str
) -> None:
    print(f"{'question':<58} {'incidents':>9} {'detected':>8} {'alerts':>6} {'true':>5}")
    for q, row in result["per_question"].items():
        print(f"{q[:58]:<58} {row['incidents']:>9} {row['detected']:>8} {row['alerts']:>6} {row['true']:>5}")
    print(
        f"precision {result['precision']:.3f} ({result['true_alerts']}/{result['alerts']} alerts true)   "
        f"recall {result['recall']:.3f} ({result['detected']}/{result['incidents']} incidents detected)"
    )
    if seconds is not None:
        print(f"time {seconds:.1f} s for {tokens:,} tokens ({tokens / seconds:.0f} tokens/s, model loading included)")
    summary = {k: v for k, v in result.items() if k != "per_question"}
    summary.update(
        seed=truth.seed,
        tokens=tokens,
        lines=truth.lines,
        questions=len(truth.questions),
        model=args.model,
        embedder=args.embedder or "default",
        threshold=args.threshold,
        measure=args.measure,
        warmup=args.warmup,
        cooldown=args.cooldown,
        min_overlap=args.min_overlap,
        segment_tokens=getattr(args, "segment_tokens", None),
        seconds=None if seconds is None else round(seconds, 1),
        replay=bool(args.replay),
        precision=round(result["precision"], 4),
        recall=round(result["recall"], 4),
        cpu=cpu_model(),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
