"""The state directory seen from the engine: each intake step logged before ``feed`` returns,
snapshots of every stage, recovery (the newest snapshot restored, the log records after it
replayed through :meth:`Intake.apply`), the input marks ``ingest`` resumes from, and the
re-scan of the whole logged stream. The format and its checks live in
:mod:`xl3m_stream.persistence`; docs/RELIABILITY.md says what is guaranteed."""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import msgspec

from ..config import EngineConfig
from ..errors import InputError, StateError
from ..events import ErrorEvent, Event
from ..persistence import (
    FORMAT_VERSION,
    EngineSnapshot,
    InputMark,
    Layout,
    LogReader,
    PendingSegment,
    RecoveryReport,
    StateDir,
    read_meta,
    tokenizer_fingerprint,
)
from ..relevance import ANALYZER, ArrivalFusion, LexicalIndex
from ..segmenter import newline_token_ids
from ..sources import DecodeStats
from ..store import SegmentStore
from ..tokenizer import backend_tokenizer
from .intake import Intake
from .questions import Questions
from .queue import Pending, ScoringQueue
from .signals import Signals
from .watches import SavedWatches, Watches

log = logging.getLogger("xl3m_stream.engine")

INPUTS_KEPT = 1024
"""Inputs (ingested files) whose latest mark a state remembers for resuming."""


def resolve_overlap(config: EngineConfig) -> EngineConfig:
    """``config`` with ``segment_overlap="auto"`` made a number: the overlap an existing state
    dir was cut with (same segment length and cut), so reopening it never trips the layout check;
    else ``config.overlap_tokens``."""
    if config.segment_overlap != "auto":
        return config
    overlap = config.overlap_tokens
    meta = read_meta(config.state_dir) if config.state_dir is not None else None
    if meta is not None:
        lay = meta.layout
        if (lay.segment_tokens, lay.segment_cut) == (config.segment_tokens, config.segment_cut):
            overlap = lay.segment_overlap
    return config.replace(segment_overlap=overlap)


def state_defaults(base: EngineConfig, state_dir: str) -> EngineConfig:
    """Settings recorded in an existing state (its model, its segment layout) for those left at
    their defaults: ``ask --state-dir DIR`` needs no more options than the ingest had."""
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


def next_items(items: Iterator[Any], n: int = 256) -> list[Any]:
    """Up to ``n`` items of ``items`` (run in a worker thread: they come from disk)."""
    return list(itertools.islice(items, n))


class Journal:
    """Without a state dir (``state`` None) it only tracks the input marks' absence."""

    def __init__(
        self,
        config: EngineConfig,
        intake: Intake,
        queue: ScoringQueue,
        store: SegmentStore,
        questions: Questions,
        signals: Signals,
        counters: dict[str, int],
    ) -> None:
        self._config = config
        self._intake = intake
        self._queue = queue
        self._store = store
        self._questions = questions
        self._signals = signals
        self._counters = counters
        self.state: StateDir | None = None
        self.recovery: RecoveryReport | None = None
        self.input_mark: InputMark | None = None  # the last one logged or restored (ingest resume)
        # the latest mark of each input (bounded): a file ingested, then another, then the first
        # again resumes where the first stopped instead of taking it twice
        self.inputs: OrderedDict[str, InputMark] = OrderedDict()
        self.wake = anyio.Event()  # a snapshot may be due
        self._snapshot_lock = anyio.Lock()

    # -- recovery ---------------------------------------------------------------------------
    def save_watches(self, watches: SavedWatches) -> None:
        """Keep the standing questions with the state (a restart watches them again)."""
        if self.state is not None:
            self.state.write_watches(msgspec.json.encode(watches))

    async def open(self, model_name: str, backpressure: Callable[[], Any], watches: Watches) -> None:
        """Open ``config.state_dir``: restore its newest snapshot, replay the log records after it
        (``backpressure()`` awaited between record batches)."""
        cfg = self._config
        assert cfg.state_dir is not None
        layout = await anyio.to_thread.run_sync(self._layout)
        state = await anyio.to_thread.run_sync(
            functools.partial(
                StateDir.open, cfg.state_dir, layout=layout, model=cfg.model, model_name=model_name, fsync=cfg.fsync
            )
        )
        try:
            snap = await anyio.to_thread.run_sync(state.recover)
            if snap is not None:
                self._restore(snap, stale=state.report.model_changed)
            cut_before = self._counters["segments_cut"]
            records = state.replay()
            while batch := await anyio.to_thread.run_sync(next_items, records):  # disk reads off the loop
                for rec, ids, ends in batch:
                    if rec.input is not None:
                        self._note_input(rec.input)
                    self._counters["segments_cut"] += self._queue.put(self._intake.apply(rec, ids, ends))
                await backpressure()
            saved = await anyio.to_thread.run_sync(state.read_watches)
            if saved is not None:
                try:
                    watches.restore(msgspec.json.decode(saved, type=SavedWatches))
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise StateError(
                        f"{state.path}/watches.json: the saved watches cannot be read ({exc}); "
                        "remove the file to start without them"
                    ) from None
            tokenizer, chars, held = state.resume
            self._intake.itok.restore(tokenizer)
            self._intake.chars = chars
            self._intake.bytes.restore(held)
        except BaseException:
            state.close()
            raise
        report = state.report
        report.requeued_segments = (len(snap.unscored) if snap is not None else 0) + (
            self._counters["segments_cut"] - cut_before
        )
        self.state = state
        self.recovery = report
        watches.on_change = self.save_watches  # from now on each change is saved
        log.info(
            "state %s: %s; snapshot %s, %d log records replayed, %d segments to score, %d tokens",
            state.path,
            "new" if report.created else "restored",
            report.snapshot,
            report.replayed_records,
            report.requeued_segments,
            report.tokens,
        )

    def _layout(self) -> Layout:
        """What decides the segments cut from logged ids (checked against the state's)."""
        cfg = self._config
        tok = self._intake.tokenizer
        vocab = backend_tokenizer(tok).get_vocab(with_added_tokens=True)
        return Layout(
            segment_tokens=cfg.segment_tokens,
            segment_overlap=cfg.overlap_tokens,
            segment_cut=cfg.segment_cut,
            boundary_ids=sorted(newline_token_ids(tok)) if cfg.segment_cut == "lines" else None,
            vocab_size=len(tok),
            tokenizer_sha256=tokenizer_fingerprint(vocab),
        )

    def _restore(self, snap: EngineSnapshot, *, stale: bool) -> None:
        """Put every stage where ``snap`` says it was (the log records after it come next)."""
        cfg = self._config
        self._intake.restore(snap)
        for mark in [*snap.inputs, *([snap.input] if snap.input is not None else [])]:
            self._note_input(mark)
        self._questions.restore(snap.questions)
        store = SegmentStore.from_snapshot(snap.store)
        store.resize(cfg.store_segments, cfg.store_tokens)  # the bounds may have changed
        if stale and len(store):  # scored by another model: re-scored at the next ask
            store.rescore({e.segment.seq: e.score for e in store}, question_id=0)
        self._store.take_over(store)
        # cut but not scored before the stop: scored now
        self._queue.put(
            Pending(p.segment, tuple(p.question) if p.question is not None else None) for p in snap.unscored
        )
        for name, value in snap.counters.items():
            if name in self._counters:
                self._counters[name] = value
        if snap.lexical is not None and self._signals.lexical is not None:
            if snap.lexical.analyzer == ANALYZER:
                self._signals.lexical = LexicalIndex.from_state(snap.lexical)
            else:  # counted as other terms: the frequencies start again from this point of the stream
                log.warning(
                    "state %s: lexical frequencies were counted as %r terms, this version counts %r: "
                    "they restart from here (the lexical signal is weaker until the stream refills them)",
                    self._config.state_dir,
                    snap.lexical.analyzer,
                    ANALYZER,
                )

    # -- logging ----------------------------------------------------------------------------
    def log(
        self,
        pos: int,
        ids: Sequence[int],
        ends: Sequence[int] = (),
        *,
        text: str = "",
        meta: dict[str, Any] | None = None,
        end_doc: bool = False,
        cut: bool = False,
        mark: InputMark | None = None,
    ) -> None:
        """Log one intake step that took ``ids`` at stream token ``pos`` (no-op without a state)."""
        if self.state is not None:
            intake = self._intake
            self.state.append(
                pos,
                ids,
                ends,
                text=text,
                meta=meta,
                chars=intake.chars,
                consumed=intake.itok.chars_consumed,
                end_doc=end_doc,
                cut=cut,
                held=intake.bytes.held,
                mark=mark,
            )

    def check_writable(self) -> None:
        """StateError when the state dir cannot take more (a failed write stopped intake)."""
        if self.state is not None:
            self.state.check_writable()

    async def commit(self) -> None:
        """``fsync="always"``: put what was logged on stable storage before ``feed`` returns."""
        state = self.state
        if state is not None and state.fsync_policy == "always" and state.sync_due():
            await anyio.to_thread.run_sync(state.sync)

    def scored(self, n: int) -> None:
        """``n`` more segments scored: a snapshot may be due by count."""
        state = self.state
        if state is not None and state.note_scored(n, self._config.snapshot_every_segments):
            self.wake.set()

    # -- snapshots --------------------------------------------------------------------------
    def capture(self) -> EngineSnapshot:
        """Every stage's state now; call it between intake steps (with the intake lock held)."""
        assert self.state is not None
        intake = self._intake
        offset, records, last = self.state.snapshot_cursor()
        questions = {key: ids for ids, key in self._questions.keys.items()}
        store = self._store.snapshot()
        used = sorted({e.question_id for e in store.entries if e.question_id in questions})
        renumber = {key: i + 1 for i, key in enumerate(used)}  # dense: new keys never collide
        entries = [msgspec.structs.replace(e, question_id=renumber.get(e.question_id, 0)) for e in store.entries]
        lexical = self._signals.lexical
        return EngineSnapshot(
            version=FORMAT_VERSION,
            time=time.time(),
            log_offset=offset,
            log_records=records,
            position=intake.position,
            chars=intake.chars,
            held=intake.bytes.held,
            tokenizer=intake.itok.state(),
            segmenter=intake.segmenter.state(),
            meta_index=intake.cutter.index.state(),
            recent=list(intake.recent),
            store=msgspec.structs.replace(store, entries=entries),
            questions=[list(questions[key]) for key in used],
            unscored=[
                PendingSegment(segment=p.segment, question=list(p.question) if p.question is not None else None)
                for p in self._queue.waiting()
            ],
            counters=dict(self._counters),
            decode=DecodeStats(**msgspec.structs.asdict(intake.decode_stats)),
            lexical=lexical.state() if lexical is not None else None,
            stream_id=self.state.stream_id,
            last_record=last,
            input=self.input_mark,
            inputs=[m for m in self.inputs.values() if m is not self.input_mark],
        )

    async def write_snapshot(self, intake_lock: anyio.Lock) -> None:
        state = self.state
        assert state is not None
        async with self._snapshot_lock:
            async with intake_lock:
                snap = self.capture()
                state.note_captured()
            await anyio.to_thread.run_sync(state.write_snapshot, snap)

    async def run(self, intake_lock: anyio.Lock, report: Callable[[Event], None]) -> None:
        """Background durability: fsync the log as the policy says, write periodic snapshots.
        A failure (e.g. disk full: the log still holds everything) is counted and reported."""
        cfg = self._config
        state = self.state
        assert state is not None
        tick = min(cfg.fsync_interval_s, cfg.snapshot_every_s)
        while True:
            with anyio.move_on_after(tick):
                await self.wake.wait()
            self.wake = anyio.Event()
            try:
                if state.sync_due(interval=cfg.fsync_interval_s):
                    await anyio.to_thread.run_sync(state.sync)
                if state.snapshot_due(cfg.snapshot_every_s, cfg.snapshot_every_segments):
                    await self.write_snapshot(intake_lock)
            except (OSError, StateError) as exc:
                log.error("state %s: %s", state.path, exc)
                self._counters["errors"] += 1
                report(ErrorEvent(time=time.time(), kind="state", message=str(exc)))
                await anyio.sleep(tick)

    async def close(self, intake_lock: anyio.Lock) -> None:
        """Final snapshot (segments not scored yet are kept for the next start), then close."""
        state = self.state
        assert state is not None
        try:
            await self.write_snapshot(intake_lock)
        except Exception as exc:
            log.warning("state %s: final snapshot failed (the log holds everything): %s", state.path, exc)
        finally:
            self.state = None
            await anyio.to_thread.run_sync(state.close)

    # -- input marks ------------------------------------------------------------------------
    def mark(self, source: str, taken: int, *, complete: bool, digest: str) -> InputMark:
        """Log a mark of input ``source`` (call with the feeding and intake locks held)."""
        mark = InputMark(source=source, taken=taken, at=self._intake.chars, complete=complete, digest=digest)
        self.log(self._intake.position, (), mark=mark)
        self._note_input(mark)
        return mark

    def _note_input(self, mark: InputMark) -> None:
        """``mark`` is now the last; the previous last, if it was another input's and not complete,
        is settled: the text fed after it up to this mark was that input's, and no more."""
        last = self.input_mark
        if last is not None and last.source != mark.source and not last.complete and last.source in self.inputs:
            self.inputs[last.source] = msgspec.structs.replace(
                last,
                taken=last.taken_by(mark.at),
                at=mark.at,
                digest="",  # (the hash covered fewer characters)
            )
        self.inputs[mark.source] = mark
        self.inputs.move_to_end(mark.source)
        while len(self.inputs) > INPUTS_KEPT:
            self.inputs.popitem(last=False)
        self.input_mark = mark

    def input_resume(self, source: str) -> tuple[InputMark | None, int]:
        mark = self.inputs.get(source)
        if mark is None:
            return None, 0
        if mark is self.input_mark:  # the last input: what was fed after its mark is its text
            return mark, mark.taken_by(self._intake.chars)
        return mark, mark.taken

    # -- re-scan ----------------------------------------------------------------------------
    async def rescan(
        self, question: str | None, intake_lock: anyio.Lock, score: Callable[[list[Any], tuple[int, ...]], Any]
    ) -> int:
        """Score every logged segment against ``question`` (None: InputError, the engine has no
        question set) and refill the store with the best (see ``Engine.rescan``); StateError,
        the store left as it was, if the log is damaged."""
        assert self.state is not None
        if question is None:
            raise InputError("rescan() needs a question (the engine has none set)")
        _, q_ids = self._questions.encode(question)
        cfg = self._config
        key = self._questions.key(q_ids)
        async with intake_lock:
            horizon, upto = self._intake.segmenter.next_seq, self.state.records  # what the log holds now
        fresh = SegmentStore(cfg.store_segments, cfg.store_tokens)
        signals = self._signals
        fusion = ArrivalFusion(signals.fusion.signals)  # its own scales: the stream's stay
        reader = LogReader(self.state.path, upto_records=upto)
        segments = reader.segments()
        scanned = 0
        while batch := await anyio.to_thread.run_sync(next_items, segments, cfg.batch_size):
            results = await score(batch, q_ids)
            arrivals = await signals.arrival(batch, results, question, signals.texts(batch), fusion)
            for seg, (value, scores) in zip(batch, arrivals):
                fresh.offer(seg, value, question_id=key, scores=scores)
            scanned += len(batch)
        if reader.cursor.records < upto:  # stopped early: a damaged record (LogReader.torn says why)
            raise StateError(
                f"state dir {self.state.path}: the log is damaged at byte {reader.cursor.offset} "
                f"(after record {reader.cursor.records}: {reader.torn or 'it ends early'}); the re-scan read "
                f"{scanned} of the {horizon} segments cut, so the store was left as it was"
            )
        for entry in self._store:  # cut after the re-scan began: kept with their own scores
            if entry.segment.seq >= horizon:
                fresh.offer(entry.segment, entry.score, question_id=entry.question_id, scores=entry.scores)
        self._store.take_over(fresh)
        return scanned
