"""The async streaming engine: the only module that knows about concurrency.

Data moves one way through named stages::

    feed/process -> IncrementalTokenizer -> Segmenter -> pending queue (backpressure)
      -> batcher (up to batch_size segments or batch_wait_ms) -> scoring on a replica
         (worker thread, per-replica capacity limit, retried elsewhere on failure)
      -> SegmentStore (bounded, least relevant evicted) -> events
    ask/ask_stream/key_context -> wait for what was fed -> re-score if needed -> select
      -> assemble key context -> Reader.generate in a worker thread -> text pieces

Torch never runs on the event loop: scoring and generation go through ``anyio.to_thread``.
Works under asyncio and trio.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import msgspec
from sortedcontainers import SortedSet

from .config import EngineConfig
from .devices import DevicePool, Replica
from .errors import EngineClosedError, InputError, ScoringError
from .events import (
    Answered,
    ErrorEvent,
    Event,
    EventStream,
    SegmentEvicted,
    SegmentKept,
    SegmentScored,
)
from .inference import ContextSegment, KeyContext, assemble
from .segment import Segment
from .segmenter import MetaIndex, Segmenter, newline_token_ids
from .sources import DecodeStats, Utf8Decoder
from .store import SegmentStore, StoreEntry, rank_key, select_best
from .tokenizer import IncrementalTokenizer

log = logging.getLogger("xl3m_stream.engine")

FEED_SLICE_CHARS = 1 << 16
"""Text is tokenised in slices of this many characters, with backpressure between slices."""
FEED_SLICE_TOKENS = 1 << 14
THREAD_TOKENIZE_CHARS = 1 << 14
"""Text longer than this is tokenised in a worker thread so the event loop stays responsive."""


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


@dataclass
class _Pending:
    segment: Segment
    question: tuple[int, ...] | None  # rolling window (None: the explicit question at dispatch)


class Engine:
    """Streaming XL3M engine. Use ``async with Engine(config) as engine: ...``."""

    def __init__(self, config: EngineConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else EngineConfig()
        self.config = base.replace(**overrides) if overrides else base
        self._pool: DevicePool | None = None
        self.decode_stats = DecodeStats()
        """Counters of bytes fed: invalid UTF-8 replaced, NUL bytes removed."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._started = False

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
        self._pool = await anyio.to_thread.run_sync(DevicePool.load, cfg)
        first = self._pool.first
        tok = first.scoring_model.tokenizer
        self._hf_tokenizer = tok
        self._itok = IncrementalTokenizer(tok)
        self._meta = MetaIndex()
        self._chars_in = 0  # characters of text fed (offsets of the incremental tokenizer)
        self._bytes = Utf8Decoder(self.decode_stats)
        boundary = newline_token_ids(tok) if cfg.segment_cut == "lines" else None
        self._segmenter = Segmenter(cfg.segment_tokens, overlap=cfg.segment_overlap, boundary_ids=boundary)
        self._store = SegmentStore(cfg.store_segments, cfg.store_tokens)
        self._score_window = first.scoring_model.window
        self._limiters = {r.index: anyio.CapacityLimiter(cfg.device_concurrency) for r in self._pool.replicas}
        self._reader_limiters = {r.index: anyio.CapacityLimiter(1) for r in self._pool.replicas}
        self._slots = anyio.Semaphore(cfg.device_concurrency * len(self._pool.replicas))
        self._intake = anyio.Lock()
        self._pending: deque[_Pending] = deque()
        self._unscored: SortedSet = SortedSet()
        self._failed: list[Segment] = []
        self._work = anyio.Event()
        self._progress = anyio.Event()
        self._flush_now = False
        keep = max(cfg.question_tokens, cfg.local_window_tokens) + cfg.segment_tokens
        self._recent: deque[int] = deque(maxlen=keep)
        self._position = 0  # stream tokens consumed (== segmenter.position)
        self._question_keys: dict[tuple[int, ...], int] = {}
        self._explicit: tuple[str, tuple[int, ...]] | None = None
        self._subscribers: list[EventStream] = []
        self._counters = dict(
            segments_cut=0, segments_scored=0, segments_failed=0, batches=0, scored_tokens=0, asks=0, errors=0
        )
        self._scoring_seconds = 0.0
        self._inflight = 0
        if cfg.question is not None:
            self._explicit = self._encode_scoring_question(cfg.question)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._batch_loop)

    async def aclose(self) -> None:
        """Stop background work (unscored segments are dropped; ``flush()`` first to keep them)."""
        if self._closed:
            return
        self._closed = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            try:
                await self._tg.__aexit__(None, None, None)
            finally:
                self._tg = None
        for sub in list(getattr(self, "_subscribers", [])):
            sub.close()
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
        """
        self._check_open()
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = self._bytes.decode(bytes(data))  # one decoder: a character split across feeds survives
        meta = None
        text = getattr(data, "text", None)
        if isinstance(text, str) and not isinstance(data, str):  # a TextChunk: text and metadata
            meta = getattr(data, "meta", None)
            data = text
        if isinstance(data, str):
            taken = 0
            for start in range(0, len(data), FEED_SLICE_CHARS):
                taken += await self._take_text(data[start : start + FEED_SLICE_CHARS], meta)
            return taken
        if isinstance(data, Sequence) and not isinstance(data, str):
            ids = _check_ids(data, len(self._hf_tokenizer))
            async with self._intake:
                head, ends = self._itok.flush_with_offsets()  # text fed earlier comes first
                self._meta.add_tokens(ends)
                self._take_ids(head, attributed=True)
            for start in range(0, len(ids), FEED_SLICE_TOKENS):
                async with self._intake:
                    self._take_ids(ids[start : start + FEED_SLICE_TOKENS])
                await self._backpressure()
            return len(head) + len(ids)
        raise InputError(f"feed() takes str, bytes, token ids or a TextChunk, not {type(data).__name__}")

    async def _take_text(self, text: str, meta: dict[str, Any] | None = None) -> int:
        async with self._intake:
            if len(text) > THREAD_TOKENIZE_CHARS:
                ids, ends = await anyio.to_thread.run_sync(self._itok.push_with_offsets, text)
            else:
                ids, ends = self._itok.push_with_offsets(text)
            self._chars_in += len(text)
            self._meta.add_chunk(self._chars_in, meta)
            self._meta.add_tokens(ends)
            self._take_ids(ids, attributed=True)
        await self._backpressure()
        return len(ids)

    def _take_ids(self, ids: Sequence[int], *, attributed: bool = False) -> None:
        """Segment ``ids`` and queue the segments (synchronous: atomic on the event loop)."""
        if not ids:
            return
        if not attributed:
            self._meta.add_unattributed(len(ids))
        history = list(self._recent)
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
        async with self._intake:
            ids, ends = self._itok.flush_with_offsets()
            self._meta.add_tokens(ends)
            self._take_ids(ids, attributed=True)
            history = list(self._recent)
            tail = self._segmenter.flush()
            self._queue(tail, history, self._position - len(history))
            self._flush_now = True
            self._work.set()
        await self.drain()
        return len(ids)

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
        key = self._question_keys.get(ids)
        if key is None:
            key = len(self._question_keys) + 1
            self._question_keys[ids] = key
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
                results = await self._score(segments, q_ids)
            except ScoringError as exc:
                self._counters["segments_failed"] += len(segments)
                self._failed.extend(segments)
                self._emit(
                    ErrorEvent(time=time.time(), kind="scoring", message=str(exc), seqs=[s.seq for s in segments])
                )
                return
            key = self._question_key(q_ids)
            measure = self.config.measure
            now = time.time()
            for seg, scores in zip(segments, results):
                score = scores[measure]
                if not math.isfinite(score):
                    score = -1e30
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
            self._counters["segments_scored"] += len(segments)
            self._counters["batches"] += 1
            self._counters["scored_tokens"] += sum(s.n_tokens for s in segments)
        finally:
            for p in batch:
                self._unscored.discard(p.segment.seq)
            self._inflight -= 1
            self._slots.release()
            self._notify_progress()

    async def _score(self, segments: list[Segment], q_ids: tuple[int, ...]) -> list[dict[str, float]]:
        """Score on the least-loaded replica; on failure try the others, then halve the batch."""
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
                return await self._score_on(replica, token_lists, q_ids)
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
            return await self._score(segments[:half], q_ids) + await self._score(segments[half:], q_ids)
        raise ScoringError(f"scoring failed on every replica: {type(last_error).__name__}: {last_error}")

    async def _score_on(
        self, replica: Replica, token_lists: list[tuple[int, ...]], q_ids: tuple[int, ...]
    ) -> list[dict[str, float]]:
        scorer = replica.scorer

        def work() -> list[dict[str, float]]:
            return scorer.score(token_lists, scorer.prepare(q_ids))

        replica.inflight += 1
        started = time.perf_counter()
        try:
            return await anyio.to_thread.run_sync(work, limiter=self._limiters[replica.index])
        finally:
            replica.inflight -= 1
            replica.batches += 1
            self._scoring_seconds += time.perf_counter() - started

    # ------------------------------------------------------------------ asking
    async def key_context(self, question: str | None = None, *, rescore: str | None = None) -> KeyContext:
        """The selected context for ``question`` without generating: hand it to any reader."""
        ctx, _, _ = await self._select(question, rescore, time.perf_counter())
        return ctx

    async def ask(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> Answer:
        """Answer ``question`` (None: the stream's last ``question_tokens`` tokens, as in the paper)."""
        started = time.perf_counter()
        ctx, prompt, timing = await self._select(question, rescore, started, max_new_tokens)
        pieces: list[str] = []
        first: float | None = None
        async for piece in self._generate(prompt, max_new_tokens):
            if first is None:
                first = time.perf_counter() - started
            pieces.append(piece)
        total = time.perf_counter() - started
        self._counters["asks"] += 1
        answer = Answer(
            text="".join(pieces),
            question=ctx.question,
            segments=ctx.segments,
            context_tokens=ctx.tokens,
            stream_tokens=ctx.stream_tokens,
            rescored=timing["rescored"],
            timings=Timings(wait_s=timing["wait_s"], rescore_s=timing["rescore_s"], first_token_s=first, total_s=total),
            model=self._pool.first.reader_model.name if self._pool else "",
        )
        self._emit(
            Answered(
                time=time.time(),
                question=ctx.question,
                seconds=total,
                segments=[s.seq for s in ctx.segments if not s.local],
            )
        )
        return answer

    async def ask_stream(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> AsyncIterator[str]:
        """Answer ``question`` as it is generated: an async iterator of text pieces."""
        _, prompt, _ = await self._select(question, rescore, time.perf_counter(), max_new_tokens)
        self._counters["asks"] += 1
        async for piece in self._generate(prompt, max_new_tokens):
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
        q_reader_tokens = reader.question_tokens(q_text)
        max_new = max_new_tokens or cfg.max_new_tokens
        room = reader.window - reader.overhead - q_reader_tokens - len(reader.sep_ids) - max_new
        if room < 1:
            raise InputError(
                f"question of {q_reader_tokens} tokens + {max_new} answer tokens does not fit the reader's "
                f"window of {reader.window} tokens"
            )
        budget = min(cfg.context_tokens, room)

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
            self._store.rescore({seq: r[measure] for seq, r in present.items()}, question_id=key, details=present)
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
        candidates.sort(key=rank_key, reverse=True)
        remaining = budget - len(local_ids)
        chosen = select_best(candidates, remaining, exclude_from=local_start if local_ids else None)
        rescored = len(mine)
        while True:
            ctx, ids = assemble(
                chosen,
                local_ids,
                local_start,
                tokenizer=tokenizer,
                question=q_text,
                budget=budget,
                stream_tokens=position,
            )
            if ctx.tokens <= budget or not chosen:
                break
            worst = min(chosen, key=rank_key)  # gap markers pushed it over budget
            chosen = [e for e in chosen if e is not worst]
        prompt = reader.prompt_ids(ids, q_text)
        return ctx, prompt, {"wait_s": waited, "rescore_s": rescore_s, "rescored": rescored}

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

    async def _generate(self, prompt: list[int], max_new_tokens: int | None) -> AsyncIterator[str]:
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
                stop=cfg.stop,
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

    # ------------------------------------------------------------------ events and stats
    def events(self) -> EventStream:
        """Subscribe to events from now on: ``async for event in engine.events(): ...``."""
        self._check_open()
        stream = EventStream(self.config.events_buffer, on_close=self._unsubscribe)
        self._subscribers.append(stream)
        return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        if stream in self._subscribers:
            self._subscribers.remove(stream)

    def _emit(self, event: Event) -> None:
        for sub in self._subscribers:
            sub.put(event)

    def stats(self) -> EngineStats:
        c = self._counters
        return EngineStats(
            tokens_in=self._position,
            segments_cut=c["segments_cut"],
            segments_scored=c["segments_scored"],
            segments_failed=c["segments_failed"],
            batches=c["batches"],
            pending_segments=len(self._pending),
            inflight_batches=self._inflight,
            store_segments=len(self._store),
            store_tokens=self._store.tokens,
            scoring_seconds=self._scoring_seconds,
            scored_tokens=c["scored_tokens"],
            asks=c["asks"],
            errors=c["errors"],
        )

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

    @property
    def model_name(self) -> str:
        """Name of the scoring model."""
        self._check_open()
        assert self._pool is not None
        return self._pool.first.scoring_model.name


def _check_ids(data: Sequence[Any], vocab: int) -> list[int]:
    ids = []
    for i, x in enumerate(data):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
            raise InputError(f"token id #{i} is {x!r}: ids must be ints in [0, {vocab})")
        ids.append(int(x))
    return ids
