"""Run the evaluation: tasks x lengths x samples x methods, through the public Engine API.

For each sample the stream goes once through a real :class:`~xl3m_stream.Engine` with the
question set (the product path: bounded store, default measure). Every segment's scores under
all four measures arrive in ``SegmentScored`` events, so the other ``xl3m-*`` measures and the
``hybrid`` ranking cost no extra forward passes. Every method then answers with the same reader
(``Engine.answer_with``) under the same token budget, and two things are recorded separately:

* selection -- whether the evidence made it into the key context (``selection_recall``) and the
  rank of the main evidence's segment in the method's ranking (``evidence_rank``),
* answering -- whether the reader's answer is right (``accuracy``).

A small reader can fail on a perfect context; the two columns show which stage failed.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import msgspec

from ..config import MEASURES, EngineConfig
from ..errors import InputError
from ..segment import Segment
from ..segmenter import Cutter, Segmenter
from ..tokenizer import IncrementalTokenizer
from .baselines import (
    default_embedder,
    rank_bm25,
    rank_embed,
    reciprocal_rank_fusion,
    select_by_scores,
    select_sink,
    select_truncate,
)
from .metrics import contains_evidence, evidence_rank, score_answer
from .realtext import corpus_identity, default_corpus
from .tasks import REAL_TASKS, TASKS, Sample, make_sample

METHODS = (
    "xl3m",
    "xl3m-entropy",
    "xl3m-nll",
    "xl3m-gain",
    "xl3m-tgain",
    "hybrid",
    "truncate",
    "sink",
    "bm25",
    "embed",
    "full",
)
"""``xl3m``: the engine as shipped (its default measure, bounded store). ``xl3m-<measure>``: the
same scoring pass ranked by one measure. ``hybrid``: reciprocal rank fusion of the LM measures
(entropy, nll, tgain) with BM25. ``full``: the whole stream, only where it fits the window."""


class EvalConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What to evaluate. Lengths are in tokens of the scoring model's tokenizer."""

    tasks: list[str] = msgspec.field(default_factory=lambda: ["passkey"])
    lengths: list[int] = msgspec.field(default_factory=lambda: [32_000])
    samples: int = 5
    first_sample: int = 0
    """Index of the first sample: samples ``first_sample .. first_sample + samples - 1`` of the
    seed are run, exactly as a run from 0 would run them, so a long evaluation can be split
    (or extended) over sessions and machines and the reports merged (``scripts/merge_eval.py``)."""
    methods: list[str] = msgspec.field(default_factory=lambda: ["xl3m", "truncate"])
    seed: int = 0
    depths: list[float] | None = None
    """Depths to cycle through (sample i gets depths[i % len]); None: drawn from the seed."""
    haystack_files: list[str] = msgspec.field(default_factory=list)
    """Prose files for the generated needle tasks (default: procedural prose)."""
    corpus: list[str] = msgspec.field(default_factory=list)
    """Real text for the real-text tasks (default: the manuals and logs found on this machine)."""
    scoring_question_tokens: int | None = None
    """Score with the last N tokens of (stream + question) instead of the question alone (the
    paper's "question = the last tokens of the input"); None: the question itself."""
    read: bool = True
    """False: selection only, no reader runs (``accuracy`` is None). Selection recall and
    evidence ranks do not depend on the reader, and reading is most of a baseline's time."""
    keep_signals: bool = False
    """Keep every segment's signal values in the xl3m results (:class:`SampleSignals`), so
    that selection rules can be compared offline (``benchmarks/fusion_offline.py``)."""
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        for t in self.tasks:
            if t not in TASKS:
                raise InputError(f"unknown task {t!r}; tasks: {', '.join(TASKS)}")
        for m in self.methods:
            if m not in METHODS:
                raise InputError(f"unknown method {m!r}; methods: {', '.join(METHODS)}")
        if not self.tasks or not self.methods or not self.lengths:
            raise InputError("give at least one task, one length and one method")
        if any(n < 256 for n in self.lengths):
            raise InputError("lengths must be at least 256 tokens")
        if self.samples < 1:
            raise InputError("samples must be at least 1")
        if self.first_sample < 0:
            raise InputError("first_sample must be at least 0")
        if self.depths is not None and any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise InputError("depths must lie in [0, 1]")
        if self.scoring_question_tokens is not None and self.scoring_question_tokens < 1:
            raise InputError("scoring_question_tokens must be at least 1")


class SampleSignals(msgspec.Struct, frozen=True, kw_only=True):
    """One sample's segments as the engine saw them (``EvalConfig.keep_signals``)."""

    sizes: list[int]
    """Each segment's cost in the reader's tokens."""
    evidence: list[list[int]]
    """For each piece of evidence, the segments that hold it whole (empty: it straddles a cut)."""
    store: list[int]
    """The segments in the bounded store when the question was asked."""
    budget: int
    """The key-context budget (reader tokens)."""
    values: dict[str, list[float]]
    """Per segment: every measure (``nll``, ``entropy``...), ``bm25`` and ``dense`` as scored on
    arrival, ``arrival`` (the fused score the store keeps) and ``bm25_global`` (BM25 with the
    whole stream's document frequencies, what the lexical signal is at ask)."""


class SampleResult(msgspec.Struct, frozen=True, kw_only=True):
    """One method on one sample."""

    task: str
    length: int
    tokens: int
    method: str
    seed: int
    depth: float | None
    accuracy: float | None
    """None: not read (``EvalConfig.read`` off)."""
    selection_recall: float | None
    evidence_rank: int | None
    answer: str
    context_tokens: int
    seconds: float
    signal_ranks: dict[str, int | None] | None = None
    """xl3m only: the evidence's rank over the whole stream under each arrival signal
    (``certainty``: the measure; ``lexical``, ``dense`` when on; ``arrival``: the fused arrival
    score the store keeps), to tell which signal found or missed it."""
    signals: SampleSignals | None = None
    """xl3m with ``keep_signals``: every segment's signal values."""


class ResultRow(msgspec.Struct, frozen=True, kw_only=True):
    """One task x length x method, aggregated over its samples."""

    task: str
    length: int
    method: str
    accuracy: float | None
    """None: the samples were not read."""
    selection_recall: float | None
    median_evidence_rank: float | None
    samples: int
    seconds: float
    selected: int | None = None
    """Samples whose whole evidence was in the key context (None: the method has no selection)."""
    accuracy_when_selected: float | None = None
    """Mean accuracy over those samples: the reader's share, apart from selection."""


class Report(msgspec.Struct, kw_only=True):
    model: str
    window: int
    """The scoring model's context window (what "x window" counts; before 2026-12-03 the reader's)."""
    machine: str
    config: dict[str, Any]
    results: list[ResultRow]
    samples: list[SampleResult]
    seconds: float
    reader: str = ""
    reader_window: int = 0
    corpora: dict[str, Any] = {}
    """For each real-text task: the corpus files and the SHA-256 of their text."""


ProgressFn = Callable[[str], None]


async def run_eval(cfg: EvalConfig, *, progress: ProgressFn | None = None) -> Report:
    """Evaluate every task x length x sample x method; see the module docstring."""
    from .. import Engine

    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    out: list[SampleResult] = []
    engine_cfg = cfg.engine.replace(store_segments=max(cfg.engine.store_segments, 1))
    model_name, window, reader, reader_window = "", 0, "", 0
    corpora = {task: corpus_identity(_corpus(task, cfg)) for task in cfg.tasks if task in REAL_TASKS}
    for task in cfg.tasks:
        for length in cfg.lengths:
            last = cfg.first_sample + cfg.samples
            for i in range(cfg.first_sample, last):
                seed = cfg.seed * 1_000_003 + i
                depth = cfg.depths[i % len(cfg.depths)] if cfg.depths else None
                async with Engine(engine_cfg) as engine:
                    model_name, window = engine.model_name, engine.model_window
                    reader, reader_window = engine.reader_name, engine.reader_window
                    sample = _sample(engine, task, length, seed, depth, cfg)
                    say(f"{task} {length:,} tokens, sample {i + 1}/{last} (depth {sample.depth:.2f})")
                    out.extend(await _evaluate_sample(engine, sample, cfg, say))
    rows = aggregate(out)
    return Report(
        model=model_name,
        window=window,
        machine=machine_description(),
        config={**msgspec.to_builtins(cfg), "engine": cfg.engine.redacted()},  # (no API key in reports)
        results=rows,
        samples=out,
        seconds=time.perf_counter() - started,
        reader=reader,
        reader_window=reader_window,
        corpora=corpora,
    )


def _corpus(task: str, cfg: EvalConfig) -> list[str]:
    """The corpus files a real-text task reads: the configured ones, else the machine's own."""
    return list(cfg.corpus) or default_corpus("log" if task == "log-real" else "prose")


def _sample(engine: Any, task: str, length: int, seed: int, depth: float | None, cfg: EvalConfig) -> Sample:
    tokenizer = engine.tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    files = _corpus(task, cfg) if task in REAL_TASKS else cfg.haystack_files
    return make_sample(task, length=length, seed=seed, depth=depth, count_tokens=count, haystack_files=files)


def cut_segments(tokenizer: Any, text: str, config: EngineConfig) -> list[Segment]:
    """The segments the engine cuts from ``text`` (same tokenizer rules, same segmenter)."""
    return cut_ids(tokenizer, stream_ids(tokenizer, text), config)


def stream_ids(tokenizer: Any, text: str) -> list[int]:
    """``text`` tokenised as the engine tokenises a stream (special-token strings as plain text)."""
    itok = IncrementalTokenizer(tokenizer)
    return itok.push(text) + itok.flush()


def cut_ids(tokenizer: Any, ids: list[int], config: EngineConfig) -> list[Segment]:
    """The segments the engine cuts from the token ids ``ids``."""
    cutter = Cutter(Segmenter.for_config(config, tokenizer))  # the engine's own path from ids to segments
    return cutter.take(ids) + cutter.cut()


async def _evaluate_sample(engine: Any, sample: Sample, cfg: EvalConfig, say: ProgressFn) -> list[SampleResult]:
    from ..events import SegmentScored

    tokenizer = engine.tokenizer
    question = sample.question
    scoring_question = question
    if cfg.scoring_question_tokens is not None:
        recent = sample.context[-16 * cfg.scoring_question_tokens :]  # enough characters for N tokens
        tail = tokenizer.encode(recent + "\n\n" + question, add_special_tokens=False)
        scoring_question = tokenizer.decode(tail[-cfg.scoring_question_tokens :])
    ids = stream_ids(tokenizer, sample.context)
    segments = cut_ids(tokenizer, ids, engine.config)
    texts = [tokenizer.decode(list(s.tokens)) for s in segments]
    sizes = [engine.reader_tokens(t) for t in texts]  # the budget counts the reader's tokens
    budget = engine.budget_for(question)
    results: list[SampleResult] = []

    def rank_of(ranking: Sequence[float]) -> int | None:
        order = sorted(range(len(segments)), key=lambda j: (-ranking[j], -j))
        return evidence_rank(sample, [texts[j] for j in order])

    def record(
        method: str,
        answer: Any,
        ranking: Sequence[float] | None,
        seconds: float,
        signal_ranks: dict[str, int | None] | None = None,
        signals: SampleSignals | None = None,
    ) -> None:
        selected = "".join(s.text for s in answer.segments)
        recall = sum(contains_evidence(sample, selected, k) for k in range(len(sample.evidence))) / len(sample.evidence)
        rank = None if ranking is None else rank_of(ranking)
        accuracy = float(score_answer(sample, answer.text)) if cfg.read else None
        seconds = round(seconds, 3)
        say(  # each result as it comes: a long run's figures are readable before its report
            f"  {method}: selection recall {recall:.2f}, evidence rank {'-' if rank is None else rank}"
            + ("" if accuracy is None else f", accuracy {accuracy:.2f}")
            + f", {seconds:.1f} s"
        )
        results.append(
            SampleResult(
                task=sample.task,
                length=sample.length,
                tokens=int(sample.meta.get("tokens", sample.length)),
                method=method,
                seed=sample.seed,
                depth=sample.depth,
                accuracy=accuracy,
                selection_recall=recall,
                evidence_rank=rank,
                answer=answer.text,
                context_tokens=answer.context_tokens,
                seconds=seconds,
                signal_ranks=signal_ranks,
                signals=signals,
            )
        )

    async def answer_indices(indices: Sequence[int], ranking: Sequence[float] | None) -> Any:
        if not cfg.read:
            return _Selected([_Text(texts[j]) for j in sorted(indices)], sum(sizes[j] for j in indices))
        chosen = [segments[j] for j in sorted(indices)]
        scores = [ranking[j] for j in sorted(indices)] if ranking is not None else None
        return await engine.answer_with(chosen, question, scores=scores)

    wanted = set(cfg.methods)
    lm_wanted = wanted & ({"xl3m", "hybrid"} | {f"xl3m-{m}" for m in MEASURES})
    lm_scores: dict[str, list[float]] = {}
    scoring_seconds = 0.0
    if lm_wanted:
        await engine.set_question(scoring_question)
        by_seq: dict[int, dict[str, float]] = {}
        arrival: dict[int, float] = {}
        events = engine.events()

        async def collect() -> None:
            async for event in events:
                if isinstance(event, SegmentScored):
                    by_seq[event.seq] = event.scores
                    arrival[event.seq] = event.score

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            # the stream goes in as the same token ids (tokenising it twice would only cost time)
            step = 1 << 14
            await engine.process(ids[k : k + step] for k in range(0, len(ids), step))
            await events.aclose()
        scoring_seconds = time.perf_counter() - t0
        if sorted(by_seq) != list(range(len(segments))):
            raise RuntimeError(f"the engine scored {len(by_seq)} segments; the evaluation cut {len(segments)}")
        lm_scores = {m: [by_seq[s.seq][m] for s in segments] for m in MEASURES}
        if "xl3m" in wanted:
            signals = {"certainty": lm_scores[engine.config.measure], "arrival": [arrival[s.seq] for s in segments]}
            for name, key in (("lexical", "bm25"), ("dense", "dense")):
                if all(key in by_seq[s.seq] for s in segments):
                    signals[name] = [by_seq[s.seq][key] for s in segments]
            signal_ranks = {name: rank_of(values) for name, values in signals.items()}
            kept = None
            if cfg.keep_signals:
                values = {m: lm_scores[m] for m in MEASURES}
                values.update({k: [by_seq[s.seq][k] for s in segments] for k in ("bm25", "dense") if k in by_seq[0]})
                values["arrival"] = signals["arrival"]
                values["bm25_global"] = _bm25_at_ask(texts, question)
                kept = SampleSignals(
                    sizes=sizes,
                    evidence=[
                        [j for j, t in enumerate(texts) if contains_evidence(sample, t, k)]
                        for k in range(len(sample.evidence))
                    ],
                    store=[e.segment.seq for e in engine.store],
                    budget=budget,
                    values=values,
                )
            t1 = time.perf_counter()
            asked = question if scoring_question == question else scoring_question
            if not cfg.read:
                ctx = await engine.key_context(asked)
                answer = _Selected(list(ctx.segments), ctx.tokens)
            else:
                answer = await engine.ask(asked)
                if scoring_question != question:  # read with the real question, from the engine's selection
                    local = [segments[s.seq] for s in answer.segments if not s.local]
                    answer = await engine.answer_with(local, question)
            seconds = scoring_seconds + time.perf_counter() - t1
            record("xl3m", answer, lm_scores[engine.config.measure], seconds, signal_ranks, kept)
        for m in MEASURES:
            if f"xl3m-{m}" in wanted:
                t1 = time.perf_counter()
                answer = await answer_indices(select_by_scores(lm_scores[m], sizes, budget), lm_scores[m])
                record(f"xl3m-{m}", answer, lm_scores[m], scoring_seconds + time.perf_counter() - t1)
    if "hybrid" in wanted:
        t1 = time.perf_counter()
        fused = reciprocal_rank_fusion(
            [lm_scores["entropy"], lm_scores["nll"], lm_scores["tgain"], rank_bm25(texts, question)]
        )
        answer = await answer_indices(select_by_scores(fused, sizes, budget), fused)
        record("hybrid", answer, fused, scoring_seconds + time.perf_counter() - t1)
    if "bm25" in wanted:
        t1 = time.perf_counter()
        ranking = rank_bm25(texts, question)
        answer = await answer_indices(select_by_scores(ranking, sizes, budget), ranking)
        record("bm25", answer, ranking, time.perf_counter() - t1)
    if "embed" in wanted:
        t1 = time.perf_counter()
        ranking = rank_embed(texts, question, default_embedder())
        answer = await answer_indices(select_by_scores(ranking, sizes, budget), ranking)
        record("embed", answer, ranking, time.perf_counter() - t1)
    if "truncate" in wanted:
        t1 = time.perf_counter()
        answer = await answer_indices(select_truncate(texts, sizes, question, budget), None)
        record("truncate", answer, None, time.perf_counter() - t1)
    if "sink" in wanted:
        t1 = time.perf_counter()
        answer = await answer_indices(select_sink(texts, sizes, question, budget), None)
        record("sink", answer, None, time.perf_counter() - t1)
    if "full" in wanted and cfg.read:
        room = engine.budget_for(question, whole_window=True)
        if sum(sizes) <= room:
            t1 = time.perf_counter()
            answer = await engine.answer_with(segments, question, budget=room)
            record("full", answer, None, time.perf_counter() - t1)
        else:
            say(f"full: skipped ({sum(sizes):,} tokens do not fit the {room:,}-token room of the window)")
    return results


def _bm25_at_ask(texts: Sequence[str], question: str) -> list[float]:
    """The engine's lexical signal at ``ask`` once every segment is counted: its BM25, its query terms."""
    from ..relevance import LexicalIndex, query_terms, term_counts

    index = LexicalIndex()
    counts = [term_counts(t) for t in texts]
    for c in counts:
        index.add(c)
    terms = query_terms(question)
    return [index.score(terms, c) for c in counts]


class _Selected(msgspec.Struct, frozen=True):
    """What a method selected when nothing is read: the parts of an ``Answer`` that ``record`` uses."""

    segments: list[Any]
    context_tokens: int
    text: str = ""


class _Text(msgspec.Struct, frozen=True):
    text: str


def aggregate(samples: Sequence[SampleResult]) -> list[ResultRow]:
    """Mean accuracy and recall, median evidence rank, per task x length x method."""
    groups: dict[tuple[str, int, str], list[SampleResult]] = {}
    for s in samples:
        groups.setdefault((s.task, s.length, s.method), []).append(s)
    rows = []
    for (task, length, method), group in groups.items():
        recalls = [g.selection_recall for g in group if g.selection_recall is not None]
        ranks = [g.evidence_rank for g in group if g.evidence_rank is not None]
        chosen = [g for g in group if g.selection_recall == 1.0]
        read = all(g.accuracy is not None for g in group)
        rows.append(
            ResultRow(
                task=task,
                length=length,
                method=method,
                accuracy=round(statistics.fmean(g.accuracy or 0.0 for g in group), 4) if read else None,
                selection_recall=round(statistics.fmean(recalls), 4) if recalls else None,
                median_evidence_rank=statistics.median(ranks) if ranks else None,
                samples=len(group),
                seconds=round(sum(g.seconds for g in group), 3),
                selected=len(chosen) if recalls else None,
                accuracy_when_selected=(
                    round(statistics.fmean(g.accuracy or 0.0 for g in chosen), 4) if chosen and read else None
                ),
            )
        )
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r.task, r.length, order.get(r.method, 99)))
    return rows


def cpu_description() -> str:
    """The CPU's model name with the flags that decide dtype choices (AMX, AVX512-BF16, AVX2)."""
    from pathlib import Path

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{name} ({', '.join(shown) or 'no AVX2'})"


def machine_description() -> str:
    import os

    import torch

    where = f"{cpu_description()}, {platform.machine()} {os.cpu_count()} cores"
    if torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name(0)}"
    return f"{where}, Python {platform.python_version()}, torch {torch.__version__}"
