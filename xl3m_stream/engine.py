"""The async streaming engine: the stages below, run as tasks of one task group.

Concurrency lives here and in the thin bridges around it (workers.py: the device threads;
sync.py: the blocking portal); the cores it drives (segmenter, scoring, store, monitor,
relevance) are synchronous and know nothing of the event loop.

Data moves one way through named stages::

    feed/process -> IncrementalTokenizer -> Segmenter -> pending queue (backpressure)
      -> batcher (up to batch_size segments or batch_wait_ms) -> scoring on a replica
         (the replica's own worker threads, retried elsewhere on failure)
      -> SegmentStore (bounded, least relevant evicted) -> events
    ask/ask_stream/key_context -> wait for what was fed -> re-score if needed -> select
      -> assemble key context -> Reader.generate in a worker thread -> text pieces

Torch never runs on the event loop: scoring runs on each replica's long-lived
:class:`~xl3m_stream.workers.DeviceThreads` (warm OpenMP teams and malloc arenas), generation
goes through ``anyio.to_thread``.
Works under asyncio and trio.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec
from sortedcontainers import SortedSet

from .config import EngineConfig
from .devices import DevicePool, Replica
from .embedding import Embedder
from .errors import ConfigError, EngineClosedError, InputError, ScoringError, StateError
from .events import (
    Alert,
    Answered,
    ErrorEvent,
    Event,
    EventStream,
    SegmentEvicted,
    SegmentKept,
    SegmentScored,
)
from .inference import ContextSegment, KeyContext, assemble
from .metrics import LatencyRecorder, Metrics
from .models import wrap
from .monitor import (
    DEFAULT_COOLDOWN,
    DEFAULT_THRESHOLD,
    DEFAULT_WATCH_MEASURE,
    SIGNAL_MEASURES,
    Monitor,
    Threshold,
    WatchStats,
)
from .persistence import (
    FLAG_CUT,
    FORMAT_VERSION,
    EngineSnapshot,
    InputMark,
    Layout,
    LogReader,
    PendingSegment,
    RecoveryReport,
    StateDir,
    StreamRecord,
    check_state_dir,
    tokenizer_fingerprint,
)
from .relevance import (
    SIGNALS,
    ArrivalFusion,
    LexicalIndex,
    fuse_at_ask,
    passage_similarity,
    query_terms,
    term_counts,
)
from .segment import Segment
from .segmenter import MetaIndex, Segmenter, newline_token_ids
from .sources import MAX_JSON_DEPTH, DecodeStats, Utf8Decoder, nesting_depth
from .store import SegmentStore, StoreEntry, rank_key, select_best
from .tokenizer import IncrementalTokenizer, backend_tokenizer
from .workers import DeviceThreads

log = logging.getLogger("xl3m_stream.engine")

FEED_SLICE_CHARS = 1 << 16
"""Text is tokenised in slices of this many characters, with backpressure between slices."""
FEED_SLICE_TOKENS = 1 << 14
QUESTION_KEYS_KEPT = 4096
"""How many distinct questions keep their key (see ``Engine._question_key``)."""
THREAD_TOKENIZE_CHARS = 1 << 14
"""Text longer than this is tokenised in a worker thread so the event loop stays responsive."""
INPUTS_KEPT = 1024
"""Inputs (ingested files) whose latest mark a state remembers for resuming."""
MAX_EXPLAINING = 32
"""Alerts explained at once; beyond it an alert is emitted without an explanation."""
MAX_SUBSCRIBERS = 256
"""``events()`` subscribers held at once (each buffers up to ``events_buffer`` events)."""


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the time of one ``ask`` went, in seconds."""

    wait_s: float
    """Waiting for the segments fed before the call to be scored."""
    rescore_s: float
    """Re-scoring stored candidates (and the unsegmented tail) against the question."""
    first_token_s: float | None
    """From the call to the first answer text (None when nothing was generated)."""
    total_s: float


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The result of ``Engine.ask``."""

    text: str
    question: str
    segments: list[ContextSegment]
    """The key context in stream order, with token offsets and scores (``local`` = recent window)."""
    context_tokens: int
    stream_tokens: int
    rescored: int
    """How many candidates were re-scored against this question."""
    timings: Timings
    model: str


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters, readable at any time with ``engine.stats()``."""

    tokens_in: int
    segments_cut: int
    segments_scored: int
    segments_failed: int
    batches: int
    pending_segments: int
    inflight_batches: int
    store_segments: int
    store_tokens: int
    scoring_seconds: float
    scored_tokens: int
    asks: int
    errors: int

    @classmethod
    def of(cls, metrics: Metrics) -> EngineStats:
        """The stats in ``metrics`` (``pending_segments`` is its ``queue_depth``)."""
        names = {f.name for f in msgspec.structs.fields(cls)} - {"pending_segments"}
        return cls(pending_segments=metrics.queue_depth, **{n: getattr(metrics, n) for n in names})


@dataclass
class _Pending:
    segment: Segment
    question: tuple[int, ...] | None  # rolling window (None: the explicit question at dispatch)


class Engine:
    """Streaming XL3M engine. Use ``async with Engine(config) as engine: ...``."""

    def __init__(
        self, config: EngineConfig | None = None, *, model: Any = None, tokenizer: Any = None, **overrides: Any
    ) -> None:
        """``model``/``tokenizer``: a causal LM object you already hold (and its fast tokenizer),
        used instead of loading ``config.model``; it scores and reads on its own device."""
        base = config if config is not None else EngineConfig()
        self.config = base.replace(**overrides) if overrides else base
        if (model is None) != (tokenizer is None):
            raise ConfigError("give both model= and tokenizer=, or neither")
        self._given = (model, tokenizer) if model is not None else None
        self._pool: DevicePool | None = None
        self.decode_stats = DecodeStats()
        """Counters of bytes fed: invalid UTF-8 replaced, NUL bytes removed."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._started = False
        self._state: StateDir | None = None  # the open state_dir (persistence)
        self._recovery: RecoveryReport | None = None

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Engine:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _start(self) -> None:
        if self._started:
            raise RuntimeError("an Engine can be started once")
        self._started = True
        cfg = self.config
        if cfg.state_dir is not None:
            check_state_dir(cfg.state_dir)  # a bad path fails before the model loads
        if self._given is not None:
            loaded = wrap(*self._given)
            self._pool = DevicePool.from_models([loaded], cfg)
        else:
            self._pool = await anyio.to_thread.run_sync(DevicePool.load, cfg)
        first = self._pool.first
        tok = first.scoring_model.tokenizer
        self._hf_tokenizer = tok
        self._itok = IncrementalTokenizer(tok)
        self._meta = MetaIndex()
        self._chars_in = 0  # characters of text fed (offsets of the incremental tokenizer)
        self._input_mark: InputMark | None = None  # the last one logged or restored (ingest resume)
        # the latest mark of each input (bounded): a file ingested, then another, then the first
        # again resumes where the first stopped instead of taking it twice
        self._inputs: OrderedDict[str, InputMark] = OrderedDict()
        self._bytes = Utf8Decoder(self.decode_stats)
        self._segmenter = Segmenter.for_config(cfg, tok)
        self._store = SegmentStore(cfg.store_segments, cfg.store_tokens)
        self._score_window = first.scoring_model.window
        # each replica's scoring runs on threads of its own, kept warm for the engine's lifetime
        self._score_threads = {
            r.index: DeviceThreads(f"xl3m-score-{r.index}", cfg.device_concurrency) for r in self._pool.replicas
        }
        self._reader_limiters = {r.index: anyio.CapacityLimiter(1) for r in self._pool.replicas}
        self._slots = anyio.Semaphore(cfg.device_concurrency * len(self._pool.replicas))
        self._intake = anyio.Lock()  # held for one intake step (a feed slice, a flush)
        self._feeding = anyio.Lock()  # held for a whole feed or flush: each arrives whole
        self._pending: deque[_Pending] = deque()
        self._unscored: SortedSet = SortedSet()
        self._failed: list[Segment] = []
        # with a state_dir: every segment cut and not yet scored, kept for snapshots
        self._not_scored: dict[int, _Pending] | None = {} if cfg.state_dir is not None else None
        self._work = anyio.Event()
        self._progress = anyio.Event()
        self._flush_now = False
        keep = max(cfg.question_tokens, cfg.local_window_tokens) + cfg.segment_tokens
        self._recent: deque[int] = deque(maxlen=keep)
        self._position = 0  # stream tokens consumed (== segmenter.position)
        # question ids -> small int key; bounded (the rolling window makes a new question per batch)
        self._question_keys: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._next_question_key = 1
        self._explicit: tuple[str, tuple[int, ...]] | None = None
        # held weakly: a subscriber its owner dropped (`async for ...: break`) goes with it
        self._subscribers: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._counters = dict(
            segments_cut=0, segments_scored=0, segments_failed=0, batches=0, scored_tokens=0, asks=0, errors=0
        )
        self._scoring_seconds = 0.0
        self._inflight = 0
        # standing questions (watch) and metrics
        self._monitor = Monitor()
        self._watched: dict[int, tuple[int, ...]] = {}  # watch id -> question token ids
        self._explaining = 0
        self._explained = anyio.Event()
        self._alerts_total = 0
        self._latency = LatencyRecorder()
        # fused relevance: the stream's running BM25 and the dense embeddings (relevance.py)
        self._lexical = LexicalIndex() if "lexical" in cfg.relevance else None
        self._embedders = (
            {r.index: r.embedder for r in self._pool.replicas if r.embedder is not None}
            if "dense" in cfg.relevance
            else None
        )
        self._fused = self._lexical is not None or self._embedders is not None
        self._fusion = ArrivalFusion([s for s in SIGNALS if s in cfg.relevance or s == "certainty"])
        self._fusion_key: int | None = None
        self._vectors: dict[int, Any] = {}  # seq -> embedding, for segments in the store
        self._question_vectors: OrderedDict[str, Any] = OrderedDict()
        if cfg.question is not None:
            self._explicit = self._encode_scoring_question(cfg.question)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._batch_loop)
        if cfg.state_dir is not None:
            try:
                await self._open_state()
            except BaseException:
                await self.aclose()  # (the task group must be left in this scope: no shield around it)
                raise

    async def aclose(self) -> None:
        """Stop background work (unscored segments are dropped, unless a ``state_dir`` keeps
        them for the next start; ``flush()`` first to score them now)."""
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            try:
                await self._tg.__aexit__(None, None, None)
            finally:
                self._tg = None
        if self._state is not None:
            with anyio.CancelScope(shield=True):
                await self._close_state()
        for sub in list(getattr(self, "_subscribers", ())):
            sub.close()
        for threads in getattr(self, "_score_threads", {}).values():
            threads.close()  # no job is running: the task group above has ended
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(threads.join, 30.0)
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _check_open(self) -> None:
        if self._closed or not self._started or self._pool is None:
            raise EngineClosedError("the engine is not running: use `async with Engine(...) as engine:`")

    # ------------------------------------------------------------------ intake
    async def feed(self, data: str | bytes | Sequence[int] | Any) -> int:
        """Add text (``str``), UTF-8 bytes, token ids, or a ``TextChunk`` to the stream.

        Returns the number of tokens that became final (text may be held back a few
        characters until the next feed shows where the token boundary falls). Waits while
        scoring lags behind by more than ``max_pending_segments`` (backpressure). Cancelling
        a feed never loses or duplicates what was already taken in.

        Concurrent calls are serialised: a feed (however long: it is taken in slices) or a
        flush waits for the one before it to end, so each arrives whole, in the order the
        calls got the turn, and no token is split between two of them.
        """
        self._check_open()
        if self._state is not None:
            self._state.check_writable()
        async with self._feeding:
            return await self._feed(data)

    async def _feed(self, data: str | bytes | Sequence[int] | Any) -> int:
        meta = None
        text = getattr(data, "text", None)
        if isinstance(text, str) and not isinstance(data, (str, bytes, bytearray, memoryview)):  # a TextChunk
            meta = getattr(data, "meta", None)
            data = text
            if meta is not None:
                _check_meta(meta)  # it goes to segments, events and the log: refuse it before anything is taken
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = self._bytes.decode(bytes(data))  # one decoder: a character split across feeds survives
            if not data and self._state is not None:  # only part of a character: log its bytes
                async with self._intake:
                    self._log(self._position, ())
                await self._commit()
        elif isinstance(data, str):
            await self._end_bytes()
        if isinstance(data, str):
            taken = 0
            for start in range(0, len(data), FEED_SLICE_CHARS):
                taken += await self._take_text(data[start : start + FEED_SLICE_CHARS], meta)
            await self._commit()
            return taken
        if isinstance(data, Sequence) and not isinstance(data, str):
            ids = _check_ids(data, len(self._hf_tokenizer))
            await self._end_bytes()
            async with self._intake:
                pos = self._position
                head, ends = self._itok.flush_with_offsets()  # text fed earlier comes first
                self._meta.add_tokens(ends)
                self._take_ids(head, attributed=True)
                self._log(pos, head, ends, end_doc=True)
            for start in range(0, len(ids), FEED_SLICE_TOKENS):
                async with self._intake:
                    pos = self._position
                    self._take_ids(ids[start : start + FEED_SLICE_TOKENS])
                    self._log(pos, ids[start : start + FEED_SLICE_TOKENS])
                await self._backpressure()
            await self._commit()
            return len(head) + len(ids)
        raise InputError(f"feed() takes str, bytes, token ids or a TextChunk, not {type(data).__name__}")

    async def _end_bytes(self) -> None:
        """Before text or ids that did not come as bytes: end a character the bytes fed before left
        incomplete (U+FFFD, counted in ``decode_stats.replaced``), so it cannot land after them."""
        if self._bytes.held:
            await self._take_text(self._bytes.final())

    async def _take_text(self, text: str, meta: dict[str, Any] | None = None) -> int:
        async with self._intake:
            pos = self._position
            if len(text) > THREAD_TOKENIZE_CHARS:
                ids, ends = await anyio.to_thread.run_sync(self._itok.push_with_offsets, text)
            else:
                ids, ends = self._itok.push_with_offsets(text)
            self._chars_in += len(text)
            self._meta.add_chunk(self._chars_in, meta)
            self._meta.add_tokens(ends)
            self._take_ids(ids, attributed=True)
            self._log(pos, ids, ends, text=text, meta=meta)
        await self._backpressure()
        return len(ids)

    def _take_ids(self, ids: Sequence[int], *, attributed: bool = False) -> None:
        """Segment ``ids`` and queue the segments (synchronous: atomic on the event loop)."""
        if not ids:
            return
        if not attributed:
            self._meta.add_unattributed(len(ids))
        history = self._history()
        base = self._position - len(history)
        segments = self._segmenter.push(ids)
        self._recent.extend(ids)
        self._position += len(ids)
        self._queue(segments, history + list(ids), base)

    def _queue(self, segments: list[Segment], window: list[int], base: int) -> None:
        n = self.config.question_tokens
        for i, seg in enumerate(segments):
            meta = self._meta.meta_for(seg.start, seg.end)
            if meta is not None:
                seg = segments[i] = msgspec.structs.replace(seg, meta=meta)
            rolling = None
            if self._explicit is None:
                # the rolling question: the stream's last tokens before this segment
                hi = seg.start - base
                lo = max(0, hi - n)
                rolling = tuple(window[lo:hi]) if hi > 0 else tuple(seg.tokens[:n])
            self._pending.append(_Pending(seg, rolling))
            self._unscored.add(seg.seq)
            if self._not_scored is not None:
                self._not_scored[seg.seq] = self._pending[-1]
        if segments:
            self._counters["segments_cut"] += len(segments)
            self._work.set()
        self._meta.forget_before(self._segmenter.position - len(self._segmenter.pending))

    async def _backpressure(self) -> None:
        while len(self._pending) > self.config.max_pending_segments and not self._closed:
            await self._wait_progress()

    async def process(self, source: AsyncIterable[Any] | Iterable[Any], *, flush: bool = True) -> int:
        """Consume a whole source (str / bytes / token-id lists / TextChunk items), with backpressure.

        With ``flush=True`` the end of the source ends the stream's current segment and the
        call returns once every segment is scored. Returns the tokens taken in.
        """
        self._check_open()
        total = 0
        if isinstance(source, AsyncIterable):
            async for item in source:
                total += await self.feed(item)
        else:
            for item in source:
                total += await self.feed(item)
        if flush:
            total += await self.flush()
        return total

    async def flush(self) -> int:
        """End the current segment (the stream's tail becomes a short segment) and wait until
        everything fed so far is scored. Returns the tokens this released."""
        self._check_open()
        if self._state is not None:
            self._state.check_writable()
        async with self._feeding:  # (never between the slices of a feed)
            await self._end_bytes()  # an incomplete character at the end: U+FFFD, counted
            async with self._intake:
                pos = self._position
                ids, ends = self._itok.flush_with_offsets()
                self._meta.add_tokens(ends)
                self._take_ids(ids, attributed=True)
                self._cut_tail()
                self._log(pos, ids, ends, end_doc=True, cut=True)
                self._flush_now = True
                self._work.set()
        await self._commit()
        await self.drain()
        return len(ids)

    def _history(self) -> list[int]:
        """The recent tokens the next segments' rolling questions may need: ``question_tokens``
        before the segmenter's pending tokens, and those (the next segment starts among them).
        A copy of that much only, so intake stays linear however long ``local_window_tokens``."""
        need = self.config.question_tokens + len(self._segmenter.pending)
        recent = self._recent
        if need >= len(recent):
            return list(recent)
        return list(itertools.islice(reversed(recent), need))[::-1]

    def _cut_tail(self) -> None:
        """The stream's pending tokens become a (short) segment, queued for scoring."""
        history = self._history()
        tail = self._segmenter.flush()
        self._queue(tail, history, self._position - len(history))

    async def drain(self) -> None:
        """Wait until every segment cut so far has been scored (or has failed)."""
        self._check_open()
        target = self._segmenter.next_seq - 1
        while self._unscored and self._unscored[0] <= target:
            self._flush_now = True
            self._work.set()
            await self._wait_progress()

    async def _wait_progress(self) -> None:
        event = self._progress
        await event.wait()

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    # ------------------------------------------------------------------ questions
    def _encode_scoring_question(self, question: str) -> tuple[str, tuple[int, ...]]:
        if not isinstance(question, str) or not question.strip():
            raise InputError("question must be a non-empty string")
        ids = tuple(self._pool.first.scorer.encode_question(question))  # type: ignore[union-attr]
        limit = self.config.max_question_tokens
        if len(ids) > limit:
            raise InputError(f"question is {len(ids)} tokens long; the limit is max_question_tokens={limit}")
        longest = self.config.segment_tokens + len(ids) + 8
        if longest > self._score_window:
            raise InputError(
                f"question of {len(ids)} tokens plus a {self.config.segment_tokens}-token segment exceeds "
                f"the scoring model's window of {self._score_window} tokens"
            )
        return question, ids

    async def set_question(self, question: str | None) -> None:
        """Score arriving segments against ``question`` from now on (None: the rolling window).

        Stored candidates keep their old scores until an ``ask`` re-scores them (``rescore``).
        """
        self._check_open()
        self._explicit = None if question is None else self._encode_scoring_question(question)

    def _question_key(self, ids: tuple[int, ...]) -> int:
        """A key that tells scores taken against the same question apart from others.

        Only the most recent questions keep their key; a stored score whose key was forgotten
        just counts as taken against another question (re-scored at the next ask).
        """
        key = self._question_keys.get(ids)
        if key is None:
            key = self._next_question_key
            self._next_question_key += 1
            self._question_keys[ids] = key
            if len(self._question_keys) > QUESTION_KEYS_KEPT:
                self._question_keys.popitem(last=False)
        else:
            self._question_keys.move_to_end(ids)
        return key

    # ------------------------------------------------------------------ scoring
    async def _batch_loop(self) -> None:
        cfg = self.config
        while True:
            while not self._pending:
                self._work = anyio.Event()
                await self._work.wait()
            if len(self._pending) < cfg.batch_size and cfg.batch_wait_ms > 0 and not self._flush_now:
                with anyio.move_on_after(cfg.batch_wait_ms / 1000):
                    while len(self._pending) < cfg.batch_size and not self._flush_now:
                        self._work = anyio.Event()
                        await self._work.wait()
            batch = self._next_batch(cfg.batch_size)
            if not self._pending:
                self._flush_now = False
            await self._slots.acquire()
            self._inflight += 1
            assert self._tg is not None
            self._tg.start_soon(self._score_and_store, batch)

    def _next_batch(self, size: int) -> list[_Pending]:
        """Up to ``size`` pending segments that share one question (rolling windows differ)."""
        first = self._pending.popleft()
        batch = [first]
        if first.question is None:  # explicit question: any pending segment joins
            while self._pending and len(batch) < size and self._pending[0].question is None:
                batch.append(self._pending.popleft())
        else:  # rolling: the batch is scored against the window of its first segment
            while self._pending and len(batch) < size and self._pending[0].question is not None:
                batch.append(self._pending.popleft())
        self._notify_progress()  # room for fed segments: release backpressure
        return batch

    async def _score_and_store(self, batch: list[_Pending]) -> None:
        try:
            if batch[0].question is not None:
                q_ids = batch[0].question
            elif self._explicit is not None:
                q_ids = self._explicit[1]
            else:  # the question was unset while the batch waited: fall back to rolling
                q_ids = tuple(self._recent)[-self.config.question_tokens :] or batch[0].segment.tokens[:1]
            segments = [p.segment for p in batch]
            try:
                results, watched = await self._score_watched(segments, q_ids)
            except ScoringError as exc:
                self._counters["segments_failed"] += len(segments)
                self._failed.extend(segments)
                self._emit(
                    ErrorEvent(time=time.time(), kind="scoring", message=str(exc), seqs=[s.seq for s in segments])
                )
                return
            key = self._question_key(q_ids)
            now = time.time()
            texts = self._texts(segments)
            question = self._explicit_text(q_ids)
            if question is not None and key != self._fusion_key:  # a new question: new scales
                self._fusion.reset()
                self._fusion_key = key
            arrivals = await self._arrival_scores(segments, results, question, texts, self._fusion)
            for seg, (score, scores) in zip(segments, arrivals):
                self._emit(
                    SegmentScored(
                        time=now, seq=seg.seq, start=seg.start, end=seg.end, score=score, scores=scores, question_id=key
                    )
                )
                offer = self._store.offer(seg, score, question_id=key, scores=scores)
                for gone in offer.evicted:
                    s = gone.segment
                    self._emit(SegmentEvicted(time=now, seq=s.seq, start=s.start, end=s.end, score=gone.score))
                if offer.kept:
                    self._emit(SegmentKept(time=now, seq=seg.seq, start=seg.start, end=seg.end, score=score))
            await self._watch_signals(segments, texts, watched)
            self._prune_vectors()
            self._check_watches(segments, watched)
            self._count_terms(texts)
            if self._not_scored is not None:
                self._mark_scored(segments)
            self._counters["segments_scored"] += len(segments)
            self._counters["batches"] += 1
            self._counters["scored_tokens"] += sum(s.n_tokens for s in segments)
        finally:
            for p in batch:
                self._unscored.discard(p.segment.seq)
            self._inflight -= 1
            self._slots.release()
            self._notify_progress()

    # ------------------------------------------------------------------ fused relevance (relevance.py)
    def _texts(self, segments: list[Segment]) -> list[str] | None:
        """The segments' texts when a signal beside the certainty needs them."""
        if not self._fused:
            return None
        return [self._hf_tokenizer.decode(list(seg.tokens)) for seg in segments]

    def _count_terms(self, texts: list[str] | None) -> None:
        """Count scored segments into the stream's running document frequencies. Called with no
        await before ``_mark_scored``, so a snapshot counts a segment exactly when it does not
        keep it aside for re-scoring."""
        if self._lexical is not None and texts is not None:
            for text in texts:
                self._lexical.add(term_counts(text))

    def _explicit_text(self, q_ids: tuple[int, ...]) -> str | None:
        """The explicit question the ids belong to (None: a rolling window)."""
        if self._explicit is not None and self._explicit[1] == q_ids:
            return self._explicit[0]
        return None

    async def _arrival_scores(
        self,
        segments: list[Segment],
        results: list[dict[str, float]],
        question: str | None,
        texts: list[str] | None,
        fusion: ArrivalFusion,
    ) -> list[tuple[float, dict[str, float]]]:
        """Each segment's arrival score and its signals (docs/METHOD.md, "Fused relevance").

        Against an explicit question with other signals on, the score is the largest z-score of
        the signals (:class:`~xl3m_stream.relevance.ArrivalFusion`); otherwise the measure.
        """
        measure = self.config.measure
        if texts is None or question is None:
            return [(_finite(r[measure]), r) for r in results]
        extra: list[dict[str, float]] = [{} for _ in segments]
        if self._lexical is not None:
            for row, value in zip(extra, self._bm25_scores(question, texts)):
                row["bm25"] = value
        if self._embedders is not None:
            for row, sim in zip(extra, await self._dense_scores(question, segments, texts)):
                row["dense"] = sim
        out = []
        for r, row in zip(results, extra):
            scores = {**r, **row}
            signals = {"certainty": _finite(r[measure])}
            if "bm25" in row:
                signals["lexical"] = row["bm25"]
            if "dense" in row:
                signals["dense"] = row["dense"]
            out.append((fusion.score(signals), scores))
        return out

    def _bm25_scores(self, question: str, texts: list[str]) -> list[float]:
        """Each text's BM25 for the question's query terms, with the stream's running df."""
        assert self._lexical is not None
        terms = query_terms(question)
        return [self._lexical.score(terms, term_counts(text)) for text in texts]

    async def _dense_scores(self, question: str, segments: list[Segment], texts: list[str]) -> list[float]:
        """Each segment's dense similarity to the question (its best passage's cosine)."""
        rows = await self._passage_vectors(segments, texts)
        return passage_similarity(await self._question_vector(question), rows)

    async def _on_embedder(self, work: Callable[[Embedder], Any]) -> Any:
        """``work(embedder)`` on a replica's own threads (the embedder is torch code)."""
        assert self._pool is not None and self._embedders is not None
        replica = self._pool.pick() or self._pool.first
        embedder = self._embedders[replica.index]
        return await self._score_threads[replica.index].run(lambda: work(embedder))

    async def _embed(self, texts: list[str]) -> list[Any]:
        """Each text's passage embeddings: a matrix, one unit row per passage."""
        return await self._on_embedder(lambda e: e.encode_passages(texts))

    async def _question_vector(self, question: str) -> Any:
        vector = self._question_vectors.get(question)
        if vector is None:
            vector = (await self._on_embedder(lambda e: e.encode([question])))[0]
            self._question_vectors[question] = vector
            if len(self._question_vectors) > 64:
                self._question_vectors.popitem(last=False)
        else:
            self._question_vectors.move_to_end(question)
        return vector

    async def _passage_vectors(self, segments: list[Segment], texts: list[str]) -> list[Any]:
        """Each segment's passage embeddings, embedding only those not kept yet. Cut segments'
        are kept (until :meth:`_prune_vectors`); the provisional tail's are not: its seq is
        the next segment's, which will hold more tokens."""
        fresh: dict[int, Any] = {}
        missing = [i for i, seg in enumerate(segments) if seg.seq not in self._vectors]
        if missing:
            for i, vector in zip(missing, await self._embed([texts[i] for i in missing])):
                seq = segments[i].seq
                fresh[seq] = vector
                if seq < self._segmenter.next_seq:
                    self._vectors[seq] = vector
        return [self._vectors.get(seg.seq, fresh.get(seg.seq)) for seg in segments]

    def _prune_vectors(self) -> None:
        """Keep embeddings only for segments the store holds (bounded with the store)."""
        if len(self._vectors) > 2 * len(self._store) + 64:
            self._vectors = {seq: v for seq, v in self._vectors.items() if seq in self._store}

    async def _fuse_candidates(self, candidates: list[StoreEntry], question: str) -> list[StoreEntry]:
        """Every signal against the asked question for each candidate, fused by rank: each signal's
        best first, then each one's second... (:func:`~xl3m_stream.relevance.fuse_at_ask`)."""
        measure = self.config.measure
        lists = [[(e.scores or {}).get(measure, e.score) for e in candidates]]
        texts = [self._hf_tokenizer.decode(list(e.segment.tokens)) for e in candidates]
        if self._lexical is not None:
            lists.append(self._bm25_scores(question, texts))
        if self._embedders is not None:
            lists.append(await self._dense_scores(question, [e.segment for e in candidates], texts))
        fused = fuse_at_ask(lists)
        return [msgspec.structs.replace(e, score=f) for e, f in zip(candidates, fused)]

    async def _score(self, segments: list[Segment], q_ids: tuple[int, ...]) -> list[dict[str, float]]:
        """Score against one question (see :meth:`_score_many`)."""
        return (await self._score_many(segments, [q_ids]))[0]

    async def _score_many(
        self, segments: list[Segment], questions: list[tuple[int, ...]]
    ) -> list[list[dict[str, float]]]:
        """Score against each question (``result[j][i]``: segment i, question j), computing each
        segment once. On the least-loaded replica; on failure try the others, then halve the batch."""
        assert self._pool is not None
        tried: list[int] = []
        last_error: BaseException | None = None
        token_lists = [s.tokens for s in segments]
        while True:
            replica = self._pool.pick(exclude=tried)
            if replica is None:
                break
            tried.append(replica.index)
            try:
                return await self._score_on(replica, token_lists, questions)
            except Exception as exc:  # a device fault (OOM, driver error...): try elsewhere
                last_error = exc
                replica.failures += 1
                self._counters["errors"] += 1
                log.warning("scoring failed on replica %d (%s): %s", replica.index, replica.device, exc)
                self._emit(
                    ErrorEvent(
                        time=time.time(),
                        kind="scoring",
                        message=f"{type(exc).__name__}: {exc}",
                        seqs=[s.seq for s in segments],
                        replica=replica.index,
                        retrying=True,
                    )
                )
        if len(segments) > 1:  # e.g. out of memory: smaller batches may fit
            half = len(segments) // 2
            first = await self._score_many(segments[:half], questions)
            second = await self._score_many(segments[half:], questions)
            return [a + b for a, b in zip(first, second)]
        raise ScoringError(f"scoring failed on every replica: {type(last_error).__name__}: {last_error}")

    async def _score_on(
        self, replica: Replica, token_lists: list[tuple[int, ...]], questions: list[tuple[int, ...]]
    ) -> list[list[dict[str, float]]]:
        scorer = replica.scorer

        def work() -> list[list[dict[str, float]]]:
            return scorer.score_many(token_lists, [scorer.prepare(q) for q in questions])

        replica.inflight += 1
        started = time.perf_counter()
        try:
            return await self._score_threads[replica.index].run(work)
        finally:
            replica.inflight -= 1
            replica.batches += 1
            elapsed = time.perf_counter() - started
            self._scoring_seconds += elapsed
            self._latency.observe(elapsed)

    # ------------------------------------------------------------------ asking
    async def key_context(self, question: str | None = None, *, rescore: str | None = None) -> KeyContext:
        """The selected context for ``question`` without generating: hand it to any reader."""
        ctx, _, _ = await self._select(question, rescore, time.perf_counter())
        return ctx

    async def ask(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> Answer:
        """Answer ``question`` (None: the stream's last ``question_tokens`` tokens, as in the paper)."""
        _check_max_new_tokens(max_new_tokens)
        started = time.perf_counter()
        ctx, prompt, timing = await self._select(question, rescore, started, max_new_tokens)
        answer = await self._read(ctx, prompt, max_new_tokens, started, **timing)
        self._counters["asks"] += 1
        self._emit(
            Answered(
                time=time.time(),
                question=ctx.question,
                seconds=answer.timings.total_s,
                segments=[s.seq for s in ctx.segments if not s.local],
            )
        )
        return answer

    async def _read(
        self,
        ctx: KeyContext,
        prompt: list[int],
        max_new_tokens: int | None,
        started: float,
        *,
        rescored: int = 0,
        wait_s: float = 0.0,
        rescore_s: float = 0.0,
    ) -> Answer:
        """Generate the answer to ``prompt`` and time it: the one place ask and answer_with read."""
        pieces: list[str] = []
        first: float | None = None
        async for piece in self._generate(prompt, max_new_tokens, ctx.question):
            first = first if first is not None else time.perf_counter() - started
            pieces.append(piece)
        total = time.perf_counter() - started
        return Answer(
            text="".join(pieces),
            question=ctx.question,
            segments=ctx.segments,
            context_tokens=ctx.tokens,
            stream_tokens=ctx.stream_tokens,
            rescored=rescored,
            timings=Timings(wait_s=wait_s, rescore_s=rescore_s, first_token_s=first, total_s=total),
            model=self._pool.first.reader_model.name if self._pool else "",
        )

    async def ask_stream(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> AsyncIterator[str]:
        """Answer ``question`` as it is generated: an async iterator of text pieces."""
        _check_max_new_tokens(max_new_tokens)
        ctx, prompt, _ = await self._select(question, rescore, time.perf_counter(), max_new_tokens)
        self._counters["asks"] += 1
        async for piece in self._generate(prompt, max_new_tokens, ctx.question):
            yield piece

    async def _select(
        self, question: str | None, rescore: str | None, started: float, max_new_tokens: int | None = None
    ) -> tuple[KeyContext, list[int], dict[str, Any]]:
        """Wait for what was fed, re-score as needed, select and assemble the key context."""
        self._check_open()
        cfg = self.config
        policy = rescore or cfg.rescore
        if policy not in ("auto", "always", "never"):
            raise InputError(f"rescore must be 'auto', 'always' or 'never', got {policy!r}")
        await self.drain()
        waited = time.perf_counter() - started
        assert self._pool is not None
        replica = self._pool.first
        reader = replica.reader
        tokenizer = self._hf_tokenizer

        # the question: explicit, or the rolling window (the stream's last tokens)
        if question is None:
            window = list(self._recent)[-cfg.question_tokens :] + self._itok_pending_ids()
            window = window[-cfg.question_tokens :]
            if not window:
                raise InputError("nothing has been fed yet, and no question was given")
            q_ids = tuple(window)
            q_text = tokenizer.decode(list(q_ids))
        else:
            q_text, q_ids = self._encode_scoring_question(question)
        budget = self.budget_for(q_text, max_new_tokens=max_new_tokens)

        # The ask sees the stream as it was when it was called: segments cut later (while this
        # ask awaits re-scoring) are left out, and so are tokens fed later.
        horizon = self._segmenter.next_seq
        position = self._position
        tail = self._tail_segment()
        local_ids: list[int] = []
        local_start = position
        if cfg.local_window_tokens:
            local_ids = list(self._recent)[-min(cfg.local_window_tokens, budget) :]
            local_start = position - len(local_ids)

        # Re-score candidates (and the unsegmented tail) against this question when needed.
        # Scores are kept per ask, so concurrent asks with other questions cannot mix them up;
        # they are also written back to the store for the next ask of the same question.
        key = self._question_key(q_ids)
        rescore_started = time.perf_counter()
        mine: dict[int, dict[str, float]] = {}
        tail_scores: dict[str, float] | None = None
        while True:
            current = [e for e in self._store if e.segment.seq < horizon]
            stale = [
                e.segment
                for e in current
                if e.segment.seq not in mine and (policy == "always" or (policy == "auto" and e.question_id != key))
            ]
            need_tail = tail is not None and tail_scores is None
            if not stale and not need_tail:
                break
            to_score = stale + ([tail] if need_tail and tail is not None else [])
            results: list[dict[str, float]] = []
            for i in range(0, len(to_score), cfg.batch_size):
                results += await self._score(to_score[i : i + cfg.batch_size], q_ids)
            if need_tail:
                tail_scores = results.pop()
            mine.update({seg.seq: r for seg, r in zip(stale, results)})
            if policy != "always":
                break  # entries that became stale meanwhile keep their own question's scores
        measure = cfg.measure
        present = {seq: r for seq, r in mine.items() if seq in self._store}
        if present:
            # fused: the store keeps ranking by arrival scores; the details now hold this question's
            ranked = {seq: self._store.get(seq).score if self._fused else r[measure] for seq, r in present.items()}
            self._store.rescore(ranked, question_id=key, details=present)
        rescore_s = time.perf_counter() - rescore_started

        candidates = []
        for e in self._store:
            seq = e.segment.seq
            if seq >= horizon:
                continue
            if seq in mine:
                e = msgspec.structs.replace(e, score=mine[seq][measure], question_id=key, scores=mine[seq])
            candidates.append(e)
        if tail is not None and tail_scores is not None:
            candidates.append(StoreEntry(segment=tail, score=tail_scores[measure], question_id=key, scores=tail_scores))
        if self._fused and candidates:
            candidates = await self._fuse_candidates(candidates, q_text)
        candidates.sort(key=rank_key, reverse=True)
        local_text = tokenizer.decode(local_ids) if local_ids else ""
        remaining = max(0, budget - reader.count(local_text))
        chosen = select_best(
            candidates,
            remaining,
            exclude_from=local_start if local_ids else None,
            cost=lambda e: reader.count(tokenizer.decode(list(e.segment.tokens))),
        )
        rescored = len(mine)
        room = self.budget_for(q_text, max_new_tokens=max_new_tokens, whole_window=True)
        while True:
            ctx = assemble(
                chosen,
                local_ids,
                local_start,
                tokenizer=tokenizer,
                question=q_text,
                budget=budget,
                stream_tokens=position,
                count=reader.count,
            )
            if ctx.tokens <= room or not chosen:
                break
            worst = min(chosen, key=rank_key)  # gap markers pushed it past the reader's window
            chosen = [e for e in chosen if e is not worst]
        prompt = reader.prompt(ctx.text, q_text)
        return ctx, prompt, {"wait_s": waited, "rescore_s": rescore_s, "rescored": rescored}

    def budget_for(self, question: str, *, max_new_tokens: int | None = None, whole_window: bool = False) -> int:
        """Tokens of key context (in the reader's tokens) an answer to ``question`` may use:
        ``context_tokens``, capped by the reader's window minus the prompt, the question and the
        answer (``whole_window``: that cap alone)."""
        self._check_open()
        assert self._pool is not None
        reader = self._pool.first.reader
        max_new = max_new_tokens or self.config.max_new_tokens
        room = reader.room(question, max_new)
        if room < 1:
            raise InputError(
                f"question of {reader.question_tokens(question)} tokens + {max_new} answer tokens does not fit "
                f"the reader's window of {reader.window} tokens"
            )
        return room if whole_window else min(self.config.context_tokens, room)

    async def answer_with(
        self,
        segments: Sequence[Segment],
        question: str,
        *,
        scores: Sequence[float | None] | None = None,
        max_new_tokens: int | None = None,
        budget: int | None = None,
    ) -> Answer:
        """Answer ``question`` from segments you chose (another retriever's, an evaluation's).

        The segments are spliced in stream order exactly as the engine's own key context is;
        they must fit ``budget`` (default :meth:`budget_for` the question; at most the room
        the reader's window leaves).
        """
        self._check_open()
        _check_answer_args(segments, max_new_tokens, len(self._hf_tokenizer))
        started = time.perf_counter()
        room = self.budget_for(question, max_new_tokens=max_new_tokens, whole_window=True)
        if budget is not None and budget > room:
            raise InputError(f"budget of {budget} tokens exceeds the {room} the reader's window leaves")
        budget = budget if budget is not None else self.budget_for(question, max_new_tokens=max_new_tokens)
        values = list(scores) if scores is not None else [None] * len(segments)
        if len(values) != len(segments):
            raise InputError(f"{len(values)} scores for {len(segments)} segments")
        entries = sorted(
            (
                StoreEntry(segment=seg, score=0.0 if v is None else float(v))
                for seg, v in zip(segments, values, strict=True)
            ),
            key=lambda e: e.segment.seq,
        )
        assert self._pool is not None
        reader = self._pool.first.reader
        ctx = assemble(
            entries,
            [],
            0,
            tokenizer=self._hf_tokenizer,
            question=question,
            budget=budget,
            stream_tokens=self._position,
            count=reader.count,
        )
        content = sum(reader.count(s.text) for s in ctx.segments)
        if content > budget or ctx.tokens > room:
            raise InputError(
                f"the chosen segments take {content} of the reader's tokens ({ctx.tokens} with gap markers); "
                f"the budget is {budget}, the reader's window leaves {room}"
            )
        return await self._read(ctx, reader.prompt(ctx.text, question), max_new_tokens, started)

    def _itok_pending_ids(self) -> list[int]:
        return self._itok.pending_ids()

    def _tail_segment(self) -> Segment | None:
        """The stream's unsegmented tail as a provisional segment (not stored), if it holds new tokens."""
        pending = list(self._segmenter.pending)
        covered = self._segmenter.carried  # overlap tokens already in the previous segment
        extra = self._itok_pending_ids()
        tokens = pending + extra
        if len(tokens) <= covered:
            return None
        start = self._segmenter.position - len(pending)
        return Segment(seq=self._segmenter.next_seq, start=start, end=start + len(tokens), tokens=tuple(tokens))

    async def _generate(self, prompt: list[int], max_new_tokens: int | None, question: str) -> AsyncIterator[str]:
        """Run the reader in a worker thread and pass its text pieces back as they come."""
        assert self._pool is not None
        replica = self._pool.first if len(self._pool.replicas) == 1 else self._pool.pick() or self._pool.first
        reader = replica.reader
        cfg = self.config
        stop = threading.Event()
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=64)
        max_new = max_new_tokens or cfg.max_new_tokens

        failure: list[BaseException] = []

        def run() -> None:
            for piece in reader.generate(
                prompt,
                max_new_tokens=max_new,
                temperature=cfg.temperature,
                seed=cfg.seed,
                stop=cfg.stop if cfg.stop is not None else reader.stop_for(question),
                should_stop=stop.is_set,
            ):
                if stop.is_set():
                    return
                try:
                    anyio.from_thread.run(send.send, piece)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

        async def produce() -> None:
            # runs in the engine's task group, so this generator holds no task group of its own
            # (an async generator may be abandoned mid-way; its consumer closing it stops the thread)
            with send:
                try:
                    await anyio.to_thread.run_sync(run, limiter=self._reader_limiters[replica.index])
                except Exception as exc:
                    failure.append(exc)

        assert self._tg is not None
        self._tg.start_soon(produce)
        try:
            async with receive:
                async for piece in receive:
                    yield piece
        finally:
            stop.set()
        if failure:
            raise failure[0]

    # ------------------------------------------------------------------ standing questions (watch)
    def watch(
        self,
        question: str,
        *,
        threshold: str | float | Threshold = DEFAULT_THRESHOLD,
        measure: str = DEFAULT_WATCH_MEASURE,
        warmup: int | None = None,
        cooldown: int = DEFAULT_COOLDOWN,
        min_score: float | None = None,
        min_overlap: float | Literal["auto"] | None = "auto",
        explain: bool = False,
    ) -> int:
        """Watch for ``question``: every segment scored from now on is also scored against it,
        and one whose relevance crosses ``threshold`` emits an :class:`Alert` event.

        ``threshold``: ``"z2"`` (2 standard deviations above the mean of the recent scores),
        ``"p99.5"`` (above their 99.5th percentile) or a number (an absolute score); relative
        thresholds wait ``warmup`` segments (default: enough for the threshold to mean
        something). ``measure``: a certainty measure (``nll`` by default), ``dense`` or
        ``fused`` (certainty, BM25 and dense z-scores summed: finds incidents that do not share
        the question's words). ``min_overlap``: the lexical gate, the share of the question's
        information (idf-weighted words) the segment must hold; None turns it off (then use a
        stricter threshold, e.g. ``"z4"``); ``"auto"``: 0.2 for a certainty measure, off for
        ``dense`` and ``fused``. ``cooldown``: crossings within that many segments
        of the last one do not alert again. ``explain``: the reader answers the question from
        the alerting segment,
        off the scoring path, and the alert is emitted with that answer as ``explanation``.
        All watched questions share one pass per batch: each segment is computed once and
        its KV cache reused for every question. See docs/MONITORING.md. Returns the watch id
        (``Alert.question_index``).
        """
        self._check_open()
        if measure == "dense" and self._embedders is None:
            raise InputError("measure='dense' needs the dense signal: put 'dense' in EngineConfig.relevance")
        _, ids = self._encode_scoring_question(question)
        watch = self._monitor.add(
            question,
            threshold=threshold,
            measure=measure,
            warmup=warmup,
            cooldown=cooldown,
            min_score=min_score,
            min_overlap=min_overlap,
            explain=explain,
        )
        self._watched[watch.id] = ids
        return watch.id

    def unwatch(self, watch_id: int) -> None:
        """Stop watching (segments already being scored may still alert for it)."""
        self._check_open()
        self._monitor.remove(watch_id)
        del self._watched[watch_id]

    def watches(self) -> list[WatchStats]:
        """The watched questions with their running statistics and alert counts."""
        return [self._monitor.stats(w.id) for w in self._monitor]

    async def explained(self) -> None:
        """Wait until every alert waiting for its explanation has been emitted."""
        while self._explaining:
            await self._explained.wait()

    async def _score_watched(
        self, segments: list[Segment], q_ids: tuple[int, ...]
    ) -> tuple[list[dict[str, float]], dict[int, list[dict[str, float]]]]:
        """Scores for the batch's question and for every watched question, in one shared pass."""
        watched = dict(self._watched)  # a snapshot: watch() may run while the batch is scored
        questions = list(dict.fromkeys([q_ids, *watched.values()]))
        results = dict(zip(questions, await self._score_many(segments, questions)))
        return results[q_ids], {wid: results[ids] for wid, ids in watched.items()}

    async def _watch_signals(
        self, segments: list[Segment], texts: list[str] | None, watched: dict[int, list[dict[str, float]]]
    ) -> None:
        """Add the signals beside the certainty that watches alert on: ``dense`` (cosine to the
        watched question) for dense and fused watches, ``bm25`` (the stream's running BM25 of
        the question) for fused ones. Called before the batch's terms are counted, as on arrival."""
        if texts is None:
            return
        for wid, rows in watched.items():
            if wid not in self._monitor or self._monitor.get(wid).measure not in SIGNAL_MEASURES:
                continue
            watch = self._monitor.get(wid)
            if watch.measure == "fused" and self._lexical is not None:
                for row, value in zip(rows, self._bm25_scores(watch.question, texts)):
                    row["bm25"] = value
            if self._embedders is not None:  # passage vectors are kept: embedded once for all watches
                for row, sim in zip(rows, await self._dense_scores(watch.question, segments, texts)):
                    row["dense"] = sim

    def _check_watches(self, segments: list[Segment], watched: dict[int, list[dict[str, float]]]) -> None:
        """Hand each watched question's scores to the monitor; emit (or explain) the alerts."""
        texts: dict[int, str] = {}

        def text_of(seg: Segment) -> str:  # decoded once, whatever the number of watches
            if seg.seq not in texts:
                texts[seg.seq] = self._hf_tokenizer.decode(list(seg.tokens))
            return texts[seg.seq]

        for wid, rows in watched.items():
            if wid not in self._monitor:
                continue  # unwatched while the batch was scored
            watch = self._monitor.get(wid)
            for seg, scores in zip(segments, rows):
                text = text_of(seg) if watch.min_overlap is not None else None
                decision = self._monitor.observe(wid, seg.seq, scores, text)
                if not decision.alert:
                    continue
                self._alerts_total += 1
                alert = Alert(
                    time=time.time(),
                    question=watch.question,
                    question_index=wid,
                    seq=seg.seq,
                    start=seg.start,
                    end=seg.end,
                    score=decision.score,
                    threshold=decision.threshold if decision.threshold is not None else math.nan,
                    text=text_of(seg),
                    meta=seg.meta,
                    measure=watch.measure,
                    scores=scores,
                    overlap=decision.overlap,
                )
                if watch.explain and self._explaining < MAX_EXPLAINING and self._tg is not None:
                    self._explaining += 1
                    self._tg.start_soon(self._explain, alert, seg)
                else:
                    self._emit(alert)

    async def _explain(self, alert: Alert, segment: Segment) -> None:
        """Emit ``alert`` with the reader's answer to its question from its segment."""
        try:
            assert self._pool is not None
            reader = self._pool.first.reader
            max_new = self.config.max_new_tokens
            room = reader.room(alert.question, max_new)
            context = reader.encode(alert.text)
            context = context[-room:] if room > 0 else []  # the segment's end, where the reader can see it
            prompt = reader.prompt(reader.decode(context), alert.question)
            pieces = [piece async for piece in self._generate(prompt, max_new, alert.question)]
            alert = msgspec.structs.replace(alert, explanation="".join(pieces).strip())
        except Exception as exc:  # the alert matters more than its explanation
            log.warning("explaining alert on segment %d failed: %s", alert.seq, exc)
        finally:
            self._emit(alert)
            self._explaining -= 1
            if not self._explaining:
                self._explained.set()
                self._explained = anyio.Event()

    def metrics(self) -> Metrics:
        """Counters and timings, for logs and dashboards (see :mod:`xl3m_stream.metrics`)."""
        c = self._counters
        return Metrics(
            time=time.time(),
            tokens_in=self._position,
            segments_cut=c["segments_cut"],
            segments_scored=c["segments_scored"],
            segments_failed=c["segments_failed"],
            scored_tokens=c["scored_tokens"],
            batches=c["batches"],
            queue_depth=len(self._pending),
            inflight_batches=self._inflight,
            store_segments=len(self._store),
            store_tokens=self._store.tokens,
            scoring_seconds=self._scoring_seconds,
            scoring_latency=self._latency.snapshot(),
            watches=len(self._monitor),
            alerts=self._alerts_total,
            asks=c["asks"],
            errors=c["errors"],
        )

    # ------------------------------------------------------------------ persistence (state_dir)
    # The format, its checks and the files live in persistence.py; here the engine only says
    # what to log (each intake step, before feed returns), what a snapshot holds, and how to
    # put both back. See docs/RELIABILITY.md.

    async def _open_state(self) -> None:
        """Open ``config.state_dir``: restore its newest snapshot, replay the log records after it."""
        cfg = self.config
        assert cfg.state_dir is not None and self._pool is not None and self._not_scored is not None
        layout = await anyio.to_thread.run_sync(self._layout)
        state = await anyio.to_thread.run_sync(
            functools.partial(
                StateDir.open,
                cfg.state_dir,
                layout=layout,
                model=cfg.model,
                model_name=self._pool.first.scoring_model.name,
                fsync=cfg.fsync,
            )
        )
        try:
            snap = await anyio.to_thread.run_sync(state.recover)
            if snap is not None:
                self._restore_snapshot(snap, stale=state.report.model_changed)
            cut_before = self._counters["segments_cut"]
            records = state.replay()
            while batch := await anyio.to_thread.run_sync(_next_records, records):  # disk reads off the loop
                for rec, ids, ends in batch:
                    self._apply_record(rec, ids, ends)
                await self._backpressure()
            tokenizer, chars, held = state.resume
            self._itok.restore(tokenizer)
            self._chars_in = chars
            self._bytes.restore(held)
        except BaseException:
            state.close()
            raise
        report = state.report
        report.requeued_segments = (len(snap.unscored) if snap is not None else 0) + (
            self._counters["segments_cut"] - cut_before
        )
        self._state = state
        self._recovery = report
        self._snapshot_lock = anyio.Lock()
        self._persist_wake = anyio.Event()
        log.info(
            "state %s: %s; snapshot %s, %d log records replayed, %d segments to score, %d tokens",
            state.path,
            "new" if report.created else "restored",
            report.snapshot,
            report.replayed_records,
            report.requeued_segments,
            report.tokens,
        )
        assert self._tg is not None
        self._tg.start_soon(self._persist_loop)

    def _layout(self) -> Layout:
        """What decides the segments cut from logged ids (checked against the state's)."""
        cfg = self.config
        tok = self._hf_tokenizer
        vocab = backend_tokenizer(tok).get_vocab(with_added_tokens=True)
        return Layout(
            segment_tokens=cfg.segment_tokens,
            segment_overlap=cfg.segment_overlap,
            segment_cut=cfg.segment_cut,
            boundary_ids=sorted(newline_token_ids(tok)) if cfg.segment_cut == "lines" else None,
            vocab_size=len(tok),
            tokenizer_sha256=tokenizer_fingerprint(vocab),
        )

    def _restore_snapshot(self, snap: EngineSnapshot, *, stale: bool) -> None:
        """Put the engine where ``snap`` says it was (the log records after it come next)."""
        cfg = self.config
        assert self._not_scored is not None
        self._segmenter.restore(snap.segmenter)
        self._meta.restore(snap.meta_index)
        self._itok.restore(snap.tokenizer)
        self._recent.extend(snap.recent)
        self._position = snap.position
        self._chars_in = snap.chars
        self._bytes.restore(snap.held)
        for mark in [*snap.inputs, *([snap.input] if snap.input is not None else [])]:
            self._note_input(mark)
        self._question_keys = OrderedDict((tuple(q), i + 1) for i, q in enumerate(snap.questions))
        self._next_question_key = len(self._question_keys) + 1
        store = SegmentStore.from_snapshot(snap.store)
        store.resize(cfg.store_segments, cfg.store_tokens)  # the bounds may have changed
        if stale and len(store):  # scored by another model: re-scored at the next ask
            store.rescore({e.segment.seq: e.score for e in store}, question_id=0)
        self._store.take_over(store)
        for p in snap.unscored:  # cut but not scored before the stop: scored now
            pending = _Pending(p.segment, tuple(p.question) if p.question is not None else None)
            self._pending.append(pending)
            self._unscored.add(p.segment.seq)
            self._not_scored[p.segment.seq] = pending
        if snap.unscored:
            self._work.set()
        for name, value in snap.counters.items():
            if name in self._counters:
                self._counters[name] = value
        for name in DecodeStats.__struct_fields__:
            setattr(self.decode_stats, name, getattr(snap.decode, name))
        if snap.lexical is not None and self._lexical is not None:
            self._lexical = LexicalIndex.from_state(snap.lexical)

    def _apply_record(self, rec: StreamRecord, ids: list[int], ends: list[int]) -> None:
        """Redo one logged intake step: the calls feed/flush made, minus the tokenizer's work."""
        if rec.input is not None:
            self._note_input(rec.input)
        if rec.text:
            self._meta.add_chunk(rec.chars, rec.meta)
        if ends:
            self._meta.add_tokens(ends)
            self._take_ids(ids, attributed=True)
        else:
            self._take_ids(ids)
        if rec.flags & FLAG_CUT:
            self._cut_tail()

    def _log(
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
        if self._state is not None:
            self._state.append(
                pos,
                ids,
                ends,
                text=text,
                meta=meta,
                chars=self._chars_in,
                consumed=self._itok.chars_consumed,
                end_doc=end_doc,
                cut=cut,
                held=self._bytes.held,
                mark=mark,
            )

    async def _commit(self) -> None:
        """``fsync="always"``: put what was logged on stable storage before ``feed`` returns."""
        state = self._state
        if state is not None and state.fsync_policy == "always" and state.sync_due():
            await anyio.to_thread.run_sync(state.sync)

    def _mark_scored(self, segments: list[Segment]) -> None:
        """Segments scored and offered to the store: a snapshot need not keep them aside."""
        assert self._not_scored is not None
        for seg in segments:
            self._not_scored.pop(seg.seq, None)
        state = self._state
        if state is not None:
            state.scored_since_snapshot += len(segments)
            if state.scored_since_snapshot >= self.config.snapshot_every_segments:
                self._persist_wake.set()

    def _capture(self) -> EngineSnapshot:
        """The engine's state now; call it between intake steps (with the intake lock held)."""
        assert self._state is not None and self._not_scored is not None
        offset, records, last = self._state.snapshot_cursor()
        questions = {key: ids for ids, key in self._question_keys.items()}
        store = self._store.snapshot()
        used = sorted({e.question_id for e in store.entries if e.question_id in questions})
        renumber = {key: i + 1 for i, key in enumerate(used)}  # dense: new keys never collide
        entries = [msgspec.structs.replace(e, question_id=renumber.get(e.question_id, 0)) for e in store.entries]
        return EngineSnapshot(
            version=FORMAT_VERSION,
            time=time.time(),
            log_offset=offset,
            log_records=records,
            position=self._position,
            chars=self._chars_in,
            held=self._bytes.held,
            tokenizer=self._itok.state(),
            segmenter=self._segmenter.state(),
            meta_index=self._meta.state(),
            recent=list(self._recent),
            store=msgspec.structs.replace(store, entries=entries),
            questions=[list(questions[key]) for key in used],
            unscored=[
                PendingSegment(segment=p.segment, question=list(p.question) if p.question is not None else None)
                for _, p in sorted(self._not_scored.items())
            ],
            counters=dict(self._counters),
            decode=DecodeStats(**msgspec.structs.asdict(self.decode_stats)),
            lexical=self._lexical.state() if self._lexical is not None else None,
            stream_id=self._state.stream_id,
            last_record=last,
            input=self._input_mark,
            inputs=[m for m in self._inputs.values() if m is not self._input_mark],
        )

    async def _write_snapshot(self) -> None:
        state = self._state
        assert state is not None
        async with self._snapshot_lock:
            async with self._intake:
                snap = self._capture()
                state.scored_since_snapshot = 0
            await anyio.to_thread.run_sync(state.write_snapshot, snap)

    async def checkpoint(self) -> None:
        """Write a snapshot to ``state_dir`` now (also done every ``snapshot_every_s`` or
        ``snapshot_every_segments``, and at close): a restart then replays less of the log."""
        self._check_open()
        if self._state is None:
            raise StateError("checkpoint() needs a state_dir (EngineConfig.state_dir)")
        await self._write_snapshot()

    async def _persist_loop(self) -> None:
        """Background durability: fsync the log as the policy says, write periodic snapshots."""
        cfg = self.config
        state = self._state
        assert state is not None
        tick = min(cfg.fsync_interval_s, cfg.snapshot_every_s)
        while True:
            with anyio.move_on_after(tick):
                await self._persist_wake.wait()
            self._persist_wake = anyio.Event()
            try:
                if state.sync_due(interval=cfg.fsync_interval_s):
                    await anyio.to_thread.run_sync(state.sync)
                if state.snapshot_due(cfg.snapshot_every_s, cfg.snapshot_every_segments):
                    await self._write_snapshot()
            except (OSError, StateError) as exc:  # e.g. disk full: the log still holds everything
                self._counters["errors"] += 1
                log.error("state %s: %s", state.path, exc)
                self._emit(ErrorEvent(time=time.time(), kind="state", message=str(exc)))
                await anyio.sleep(tick)

    async def _close_state(self) -> None:
        """Final snapshot (segments not scored yet are kept for the next start), then close."""
        state = self._state
        assert state is not None
        try:
            await self._write_snapshot()
        except Exception as exc:
            log.warning("state %s: final snapshot failed (the log holds everything): %s", state.path, exc)
        finally:
            self._state = None
            await anyio.to_thread.run_sync(state.close)

    async def mark_input(self, source: str, taken: int, *, complete: bool = False, digest: str = "") -> InputMark:
        """Log, in order with the stream, that the text fed from input ``source`` so far is its
        first ``taken`` characters (``complete``: all of it; ``digest``: their SHA-256, checked
        when the input is resumed). With :attr:`input_mark` after a restart, this is how
        ``xl3m-stream ingest`` resumes a file where the log stops instead of taking it again.
        Needs a ``state_dir``; returns the mark."""
        self._check_open()
        if self._state is None:
            raise StateError("mark_input() needs a state_dir (EngineConfig.state_dir): the log it writes to")
        if not isinstance(source, str) or not source:
            raise InputError("mark_input(): source must be a non-empty string")
        if isinstance(taken, bool) or not isinstance(taken, int) or taken < 0:
            raise InputError(f"mark_input(): taken must be an int >= 0, got {taken!r}")
        self._state.check_writable()
        async with self._feeding, self._intake:
            mark = InputMark(source=source, taken=taken, at=self._chars_in, complete=complete, digest=digest)
            self._log(self._position, (), mark=mark)
            self._note_input(mark)
        await self._commit()
        return mark

    def _note_input(self, mark: InputMark) -> None:
        """``mark`` is now the last; the previous last, if it was another input's and not complete,
        is settled: the text fed after it up to this mark was that input's, and no more."""
        last = self._input_mark
        if last is not None and last.source != mark.source and not last.complete and last.source in self._inputs:
            self._inputs[last.source] = msgspec.structs.replace(
                last,
                taken=last.taken_by(mark.at),
                at=mark.at,
                digest="",  # (the hash covered fewer characters)
            )
        self._inputs[mark.source] = mark
        self._inputs.move_to_end(mark.source)
        while len(self._inputs) > INPUTS_KEPT:
            self._inputs.popitem(last=False)
        self._input_mark = mark

    def input_resume(self, source: str) -> tuple[InputMark | None, int]:
        """The latest mark of input ``source`` and how many of its characters the stream holds
        (0 and None: none that this state remembers)."""
        mark = self._inputs.get(source)
        if mark is None:
            return None, 0
        if mark is self._input_mark:  # the last input: what was fed after its mark is its text
            return mark, mark.taken_by(self._chars_in)
        return mark, mark.taken

    @property
    def input_mark(self) -> InputMark | None:
        """The last :meth:`mark_input` mark, logged in this run or restored from the state."""
        return self._input_mark

    @property
    def chars_taken(self) -> int:
        """Characters of text taken into the stream so far (restored with the state)."""
        return self._chars_in

    @property
    def recovery(self) -> RecoveryReport | None:
        """What starting on ``state_dir`` found and restored (None without a state_dir)."""
        return self._recovery

    async def rescan(self, question: str | None = None) -> int:
        """Score every segment of the stream kept in ``state_dir`` against ``question`` (default:
        the engine's question) and refill the store with the best of them.

        The store is bounded, so segments evicted as irrelevant to the questions they met on
        arrival are gone from it; the log still holds them. A re-scan reads them back and scores
        them all: linear in the stream, like ingesting it again without tokenising. Segments cut
        while it runs keep the scores they got. Returns the number of segments scored.

        Raises StateError, leaving the store as it was, when the log cannot be read back to
        the end (a damaged record, even one a snapshot covers): a re-scan never replaces the
        store with part of the stream.
        """
        self._check_open()
        if self._state is None:
            raise StateError("rescan() needs a state_dir (EngineConfig.state_dir): the log it reads")
        if question is None:
            if self._explicit is None:
                raise InputError("rescan() needs a question (the engine has none set)")
            question = self._explicit[0]
        _, q_ids = self._encode_scoring_question(question)
        key = self._question_key(q_ids)
        cfg = self.config
        async with self._intake:
            horizon, upto = self._segmenter.next_seq, self._state.records  # what the log holds now
        fresh = SegmentStore(cfg.store_segments, cfg.store_tokens)
        fusion = ArrivalFusion(self._fusion.signals)
        reader = LogReader(self._state.path, upto_records=upto)
        segments = reader.segments()
        scanned = 0
        while batch := await anyio.to_thread.run_sync(_next_records, segments, cfg.batch_size):
            results = await self._score(batch, q_ids)
            texts = [self._hf_tokenizer.decode(list(seg.tokens)) for seg in batch] if self._fused else None
            arrivals = await self._arrival_scores(batch, results, question, texts, fusion)
            for seg, (score, scores) in zip(batch, arrivals):
                fresh.offer(seg, score, question_id=key, scores=scores)
            scanned += len(batch)
        if reader.cursor.records < upto:  # stopped early: a damaged record (LogReader.torn says why)
            raise StateError(
                f"state dir {self._state.path}: the log is damaged at byte {reader.cursor.offset} "
                f"(after record {reader.cursor.records}: {reader.torn or 'it ends early'}); the re-scan read "
                f"{scanned} of the {horizon} segments cut, so the store was left as it was"
            )
        for entry in self._store:  # cut after the re-scan began: kept with their own scores
            if entry.segment.seq >= horizon:
                fresh.offer(entry.segment, entry.score, question_id=entry.question_id, scores=entry.scores)
        self._store.take_over(fresh)
        return scanned

    # ------------------------------------------------------------------ events and stats
    def events(self) -> EventStream:
        """Subscribe to events from now on: ``async for event in engine.events(): ...``.

        The engine holds a subscriber only as long as you do: one you drop (or ``close()``,
        or leave ``async with engine.events() as events:``) stops receiving and frees its
        buffer. At most :data:`MAX_SUBSCRIBERS` are held at once (InputError beyond).
        """
        self._check_open()
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise InputError(
                f"{MAX_SUBSCRIBERS} event subscribers are open: close one (or drop it) before subscribing again"
            )
        stream = EventStream(self.config.events_buffer, on_close=self._unsubscribe)
        self._subscribers.add(stream)
        return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        self._subscribers.discard(stream)

    def _emit(self, event: Event) -> None:
        for sub in list(self._subscribers):
            sub.put(event)

    def stats(self) -> EngineStats:
        """The main counters: a subset of :meth:`metrics`, built from it."""
        return EngineStats.of(self.metrics())

    @property
    def store(self) -> SegmentStore:
        """The candidate store (read it; do not modify it while the engine runs)."""
        return self._store

    @property
    def replicas(self) -> list[Replica]:
        """The model replicas, one per device (for inspection: device, batches, failures)."""
        self._check_open()
        assert self._pool is not None
        return list(self._pool.replicas)

    @property
    def tokenizer(self) -> Any:
        """The scoring model's tokenizer."""
        return self._hf_tokenizer

    @property
    def failed_segments(self) -> list[Segment]:
        """Segments whose scoring failed on every replica (kept here, not lost)."""
        return list(self._failed)

    @property
    def stream_tokens(self) -> int:
        """Tokens taken into the stream so far."""
        return self._position

    @property
    def reader_window(self) -> int:
        """The reader's context window in tokens."""
        self._check_open()
        assert self._pool is not None
        return self._pool.first.reader.window

    def reader_tokens(self, text: str) -> int:
        """How many of the reader's tokens ``text`` takes: the unit of ``budget_for`` and
        ``answer_with``'s budget (the reader's tokenizer may differ from the scorer's)."""
        self._check_open()
        assert self._pool is not None
        return self._pool.first.reader.count(text)

    @property
    def reader_name(self) -> str:
        """Name of the model that writes the answers."""
        self._check_open()
        assert self._pool is not None
        return self._pool.first.reader_model.name

    @property
    def model_window(self) -> int:
        """The scoring model's context window in tokens (what the stream is a multiple of)."""
        self._check_open()
        assert self._pool is not None
        return self._pool.first.scoring_model.window

    @property
    def model_name(self) -> str:
        """Name of the scoring model."""
        self._check_open()
        assert self._pool is not None
        return self._pool.first.scoring_model.name


def _finite(score: float) -> float:
    """A score the store can rank (a NaN or infinite measure ranks last)."""
    return score if math.isfinite(score) else -1e30


def _next_records(records: Iterator[Any], n: int = 256) -> list[Any]:
    """Up to ``n`` items of ``records`` (run in a worker thread: they come from disk)."""
    return list(itertools.islice(records, n))


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise InputError(f"TextChunk.meta must be a dict or None, not {type(meta).__name__}")
    if nesting_depth(meta) > MAX_JSON_DEPTH:  # (a reference cycle too)
        raise InputError(f"TextChunk.meta nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        msgspec.msgpack.encode(meta)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise InputError(f"TextChunk.meta must hold JSON-compatible values: {exc}") from None


def _check_max_new_tokens(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32768):
        raise InputError(f"max_new_tokens must be an int from 1 to 32768 (or None), got {value!r}")


def _check_answer_args(segments: Sequence[Any], max_new_tokens: Any, vocab: int) -> None:
    """``answer_with``'s own arguments: segments of token ids inside the vocabulary."""
    _check_max_new_tokens(max_new_tokens)
    for k, seg in enumerate(segments):
        if not isinstance(seg, Segment):
            raise InputError(f"segment #{k} is a {type(seg).__name__}, not a Segment")
        try:
            _check_ids(seg.tokens, vocab)
        except InputError as exc:
            raise InputError(f"segment #{k} (seq {seg.seq}): {exc}") from None


def _check_ids(data: Sequence[Any], vocab: int) -> list[int]:
    ids = []
    for i, x in enumerate(data):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
            raise InputError(f"token id #{i} is {x!r}: ids must be ints in [0, {vocab})")
        ids.append(int(x))
    return ids
