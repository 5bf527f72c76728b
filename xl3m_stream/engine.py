"""The async streaming engine: a facade over the stages in ``xl3m_stream/_engine/``.

It owns the lifecycle, the task group and the event subscribers; the stages own their state
and return values. Data moves one way::

    feed/process -> Intake (decode, tokenise, cut) -> Journal.log (with a state_dir)
      -> ScoringQueue (backpressure) -> Core.score_batch on the Dispatcher's devices
         (or on Ray actors: _engine/ray_backend.RayDispatcher), taken in in stream order
      -> SegmentStore (bounded, least relevant evicted) and Watches -> events
    ask/ask_stream/key_context -> the queue drained -> Selector (re-score, fuse, select,
      assemble) -> Answerer (the reader in a worker thread) -> text pieces

Torch never runs on the event loop: scoring runs on each replica's long-lived
:class:`~xl3m_stream.workers.DeviceThreads`, generation goes through ``anyio.to_thread``.
Works under asyncio and trio. docs/METHOD.md draws the stages and names their files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, Literal

import anyio
import anyio.abc

from ._engine.answer import Answer, Answerer, Timings
from ._engine.checks import check_answer_args, check_mark, check_max_new_tokens, check_rescore
from ._engine.core import COUNTERS, Core
from ._engine.dispatch import Dispatcher
from ._engine.feeding import FEED_SLICE_CHARS, FEED_SLICE_TOKENS, THREAD_TOKENIZE_CHARS, Feeder
from ._engine.intake import Intake
from ._engine.journal import INPUTS_KEPT, Journal, resolve_overlap
from ._engine.questions import QUESTION_KEYS_KEPT, Questions
from ._engine.queue import Pending, ScoringQueue
from ._engine.select import Selector
from ._engine.signals import Signals
from ._engine.subscribers import MAX_SUBSCRIBERS, Subscribers
from ._engine.watches import MAX_EXPLAINING, Watches
from .config import EngineConfig
from .devices import DevicePool, Replica
from .errors import ConfigError, EngineClosedError, StateError
from .events import Alert, Answered, Event, EventStream
from .inference import KeyContext
from .metrics import EngineStats, Metrics
from .models import wrap
from .monitor import DEFAULT_COOLDOWN, DEFAULT_WATCH_MEASURE, Threshold, WatchStats
from .persistence import InputMark, RecoveryReport, check_state_dir
from .segment import Segment
from .sources import DecodeStats
from .store import SegmentStore

__all__ = ["Answer", "Engine", "EngineStats", "Timings"]
__all__ += ["FEED_SLICE_CHARS", "FEED_SLICE_TOKENS", "INPUTS_KEPT", "MAX_EXPLAINING"]  # limits, kept by their stages
__all__ += ["MAX_SUBSCRIBERS", "QUESTION_KEYS_KEPT", "THREAD_TOKENIZE_CHARS"]  # and importable from here

log = logging.getLogger("xl3m_stream.engine")


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
        self.decode_stats = DecodeStats()
        """Counters of bytes fed: invalid UTF-8 replaced, NUL bytes removed."""
        self._pool: DevicePool | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._dispatch: Dispatcher | None = None
        self._journal: Journal | None = None
        self._closed = self._started = False
        self._subscribers = Subscribers(self.config.events_buffer)
        self._counters = dict.fromkeys(COUNTERS, 0)

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
        cfg = self.config = resolve_overlap(cfg)
        workers = await self._start_ray_workers(cfg) if cfg.backend == "ray" else None
        try:
            if self._given is not None:
                self._pool = DevicePool.from_models([wrap(*self._given)], cfg)
            else:
                self._pool = await anyio.to_thread.run_sync(DevicePool.load, cfg)
        except BaseException:
            if workers is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(workers.close)
            raise
        first = self._pool.first
        tok = self._tokenizer = first.scoring_model.tokenizer
        self._intake = Intake(cfg, tok, self.decode_stats)
        self._queue = ScoringQueue(cfg.max_pending_segments, keep_unscored=cfg.state_dir is not None)
        self._store = SegmentStore(cfg.store_segments, cfg.store_tokens)
        if workers is not None:
            from ._engine.ray_backend import RayDispatcher

            self._dispatch = RayDispatcher(self._pool, workers, cfg.device_concurrency, self._counters, self._emit)
        else:
            self._dispatch = Dispatcher(self._pool, cfg.device_concurrency, self._counters, self._emit)
        dense = any(r.embedder is not None for r in self._pool.replicas)
        segmenter = self._intake.segmenter
        self._signals = Signals(cfg, tok, self._dispatch, dense=dense, cut_before=lambda: segmenter.next_seq)
        self._questions = Questions(cfg, first.scorer, first.scoring_model.window)
        self._watches = Watches(self._questions, self._signals, tok, embedder=cfg.embedder)
        self._journal = Journal(cfg, self._intake, self._queue, self._store, self._questions, self._signals,
                                self._counters)  # fmt: skip
        self._feeder = Feeder(self._intake, self._journal, self._queue, self._counters, len(tok), lambda: self._closed)
        self._core = Core(cfg, self._intake, self._queue, self._dispatch, self._signals, self._store,
                          self._questions, self._watches, self._journal, self._counters)  # fmt: skip
        self._answerer = Answerer(cfg, self._pool, tok, self._spawn)
        self._selector = Selector(cfg, tok, self._intake, self._store, self._questions, self._dispatch,
                                  self._signals, self._answerer)  # fmt: skip
        if cfg.question is not None:
            self._set_question(cfg.question)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._batch_loop)
        if cfg.state_dir is not None:
            try:
                await self._journal.open(first.scoring_model.name, self._feeder.backpressure, self._watches)
            except BaseException:
                await self.aclose()  # (the task group must be left in this scope: no shield around it)
                raise
            self._tg.start_soon(self._journal.run, self._feeder.step, self._emit)

    async def _start_ray_workers(self, cfg: EngineConfig) -> Any:
        """The Ray scoring actors (backend="ray"), started before the local models load so a bad
        address or missing GPUs fail first."""
        if self._given is not None:
            raise ConfigError("backend='ray': each worker loads config.model itself; not with model=/tokenizer=")
        from ._engine.ray_backend import RayWorkers

        return await anyio.to_thread.run_sync(RayWorkers.start, cfg)

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
        if self._journal is not None and self._journal.state is not None:
            with anyio.CancelScope(shield=True):
                await self._journal.close(self._feeder.step)
        self._subscribers.close()
        if self._dispatch is not None:
            await self._dispatch.aclose()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _check_open(self) -> None:
        if self._closed or not self._started or self._pool is None:
            raise EngineClosedError("the engine is not running: use `async with Engine(...) as engine:`")

    def _spawn(self, func: Any, *args: Any) -> None:
        if self._tg is None:
            raise EngineClosedError("the engine is not running")
        self._tg.start_soon(func, *args)

    def _check_writable(self) -> None:
        self._check_open()
        self._journal.check_writable()  # type: ignore[union-attr]

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
        self._check_writable()
        return await self._feeder.feed(data)

    async def process(self, source: AsyncIterable[Any] | Iterable[Any], *, flush: bool = True) -> int:
        """Consume a whole source (str / bytes / token-id lists / TextChunk items), with backpressure.

        With ``flush=True`` the end of the source ends the stream's current segment and the
        call returns once every segment is scored. Returns the tokens taken in.
        """
        self._check_open()
        total = await self._feeder.process(source, self.feed)
        return total + (await self.flush() if flush else 0)

    async def flush(self) -> int:
        """End the current segment (the stream's tail becomes a short segment) and wait until
        everything fed so far is scored. Returns the tokens this released."""
        self._check_writable()
        released = await self._feeder.flush()
        await self.drain()
        return released

    async def wait_for_room(self) -> None:
        """Wait until a feed would not wait on backpressure (at most ``max_pending_segments``
        segments waiting to be scored). A server bounds this wait to refuse a body before
        taking any of it (429, safe to retry whole) rather than part of it."""
        self._check_writable()
        await self._feeder.backpressure()

    async def drain(self) -> None:
        """Wait until every segment cut so far has been scored (or has failed)."""
        self._check_open()
        await self._queue.drain(self._intake.segmenter.next_seq - 1)

    def _set_question(self, question: str | None) -> None:
        self._core.explicit = None if question is None else self._questions.encode(question)
        self._intake.rolling = self._core.explicit is None

    async def set_question(self, question: str | None) -> None:
        """Score arriving segments against ``question`` from now on (None: the rolling window).

        Stored candidates keep their old scores until an ``ask`` re-scores them (``rescore``).
        """
        self._check_open()
        self._set_question(question)

    async def _batch_loop(self) -> None:
        cfg, dispatch = self.config, self._dispatch
        assert dispatch is not None
        previous: anyio.Event | None = None
        while True:
            batch = await self._queue.next_batch(cfg.batch_size, cfg.batch_wait_ms)
            await dispatch.acquire()  # a batch in flight per free slot
            through = anyio.Event()
            self._spawn(self._score_batch, batch, previous, through)
            previous = through  # the next batch takes its scores in after this one

    async def _score_batch(self, batch: list[Pending], turn: anyio.Event | None, through: anyio.Event) -> None:
        assert self._dispatch is not None
        try:
            outcome = await self._core.score_batch(batch, turn)
            for event in outcome.events:
                self._emit(event)
            for alert, _segment in outcome.explain:
                self._spawn(self._explain, alert)
        finally:
            through.set()
            self._queue.done(batch)
            self._dispatch.release()

    # ------------------------------------------------------------------ asking; standing questions (watch)
    async def key_context(self, question: str | None = None, *, rescore: str | None = None) -> KeyContext:
        """The selected context for ``question`` without generating: hand it to any reader."""
        return (await self._select(question, rescore, None))[0].context

    async def ask(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> Answer:
        """Answer ``question`` (None: the stream's last ``question_tokens`` tokens, as in the paper)."""
        check_max_new_tokens(max_new_tokens)
        started = time.perf_counter()
        sel, waited = await self._select(question, rescore, max_new_tokens)
        answer = await self._answerer.read(sel.context, sel.prompt, max_new_tokens, started, rescored=sel.rescored,
                                           wait_s=waited, rescore_s=sel.rescore_s)  # fmt: skip
        self._counters["asks"] += 1
        seqs = [s.seq for s in answer.segments if not s.local]
        done = Answered(time=time.time(), question=answer.question, seconds=answer.timings.total_s, segments=seqs)
        self._emit(done)
        return answer

    async def ask_stream(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> AsyncIterator[str]:
        """Answer ``question`` as it is generated: an async iterator of text pieces."""
        check_max_new_tokens(max_new_tokens)
        sel, _ = await self._select(question, rescore, max_new_tokens)
        self._counters["asks"] += 1
        async for piece in self._answerer.generate(sel.prompt, max_new_tokens, sel.context.question):
            yield piece

    async def _select(self, question: str | None, rescore: str | None, max_new_tokens: int | None) -> tuple[Any, float]:
        """Wait for what was fed, then select (re-scoring as needed): the selection and the wait."""
        self._check_open()
        policy = check_rescore(rescore or self.config.rescore)
        started = time.perf_counter()
        await self.drain()
        waited = time.perf_counter() - started
        return await self._selector.select(question, policy, max_new_tokens), waited

    def budget_for(self, question: str, *, max_new_tokens: int | None = None, whole_window: bool = False) -> int:
        """Tokens of key context (in the reader's tokens) an answer to ``question`` may use:
        ``context_tokens``, capped by the reader's window minus the prompt, the question and the
        answer (``whole_window``: that cap alone)."""
        self._check_open()
        return self._answerer.budget_for(question, max_new_tokens=max_new_tokens, whole_window=whole_window)

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
        check_answer_args(segments, max_new_tokens, len(self._tokenizer))
        started = time.perf_counter()
        ctx = self._answerer.context_of(segments, question, scores, max_new_tokens, budget, self._intake.position)
        return await self._answerer.read(ctx, self._answerer.prompt(ctx), max_new_tokens, started)

    def watch(
        self,
        question: str,
        *,
        threshold: str | float | Threshold = "auto",
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
        ``"p99.5"`` (above their 99.5th percentile), a number (an absolute score), or
        ``"auto"``: the threshold measured for the measure, its gate and the engine's embedder
        (z2 with the lexical gate, z4 without, z5.625 for ``fused`` with either embedder:
        :func:`~xl3m_stream.monitor.auto_threshold`); relative thresholds wait
        ``warmup`` segments (default: enough for the threshold to mean something).
        ``measure``: a certainty measure (``nll`` by default), ``dense`` or ``fused``
        (certainty, BM25 and dense z-scores, the two largest summed: finds incidents that do not share the
        question's words). ``min_overlap``: the lexical gate, the share of the question's
        information (idf-weighted words) the segment must hold; None turns it off (the
        ``"auto"`` threshold is then stricter); ``"auto"``: 0.2 for a certainty measure, off
        for ``dense`` and ``fused``. ``cooldown``: crossings within that many segments of the
        last one do not alert again. ``explain``: the reader answers the question from
        the alerting segment, off the scoring path, and the alert is emitted with that answer
        as ``explanation``.
        All watched questions share one pass per batch: each segment is computed once and
        its KV cache reused for every question. See docs/MONITORING.md. Returns the watch id
        (``Alert.question_index``).
        """
        self._check_open()
        return self._watches.add(question, threshold=threshold, measure=measure, warmup=warmup, cooldown=cooldown,
                                 min_score=min_score, min_overlap=min_overlap, explain=explain)  # fmt: skip

    def unwatch(self, watch_id: int) -> None:
        """Stop watching (segments already being scored may still alert for it)."""
        self._check_open()
        self._watches.remove(watch_id)

    def watches(self) -> list[WatchStats]:
        """The watched questions with their running statistics and alert counts."""
        return self._watches.stats()

    async def explained(self) -> None:
        """Wait until every alert waiting for its explanation has been emitted."""
        await self._watches.explained()

    async def _explain(self, alert: Alert) -> None:
        """Emit ``alert`` with the reader's answer to its question from its segment."""
        try:
            alert = await self._answerer.explain(alert)
        except Exception as exc:  # the alert matters more than its explanation
            log.warning("explaining alert on segment %d failed: %s", alert.seq, exc)
        finally:
            self._emit(alert)
            self._watches.end_explaining()

    # ------------------------------------------------------------------ state_dir; events, stats, models
    def _need_state(self, call: str, why: str = "") -> Journal:
        self._check_open()
        if self._journal is None or self._journal.state is None:
            raise StateError(f"{call} needs a state_dir (EngineConfig.state_dir){why}")
        return self._journal

    async def checkpoint(self) -> None:
        """Write a snapshot to ``state_dir`` now (also done every ``snapshot_every_s`` or
        ``snapshot_every_segments``, and at close): a restart then replays less of the log."""
        await self._need_state("checkpoint()").write_snapshot(self._feeder.step)

    async def mark_input(self, source: str, taken: int, *, complete: bool = False, digest: str = "") -> InputMark:
        """Log, in order with the stream, that the text fed from input ``source`` so far is its
        first ``taken`` characters (``complete``: all of it; ``digest``: their SHA-256, checked
        when the input is resumed). With :attr:`input_mark` after a restart, this is how
        ``xl3m-stream ingest`` resumes a file where the log stops instead of taking it again.
        Needs a ``state_dir``; returns the mark."""
        self._need_state("mark_input()", ": the log it writes to")
        check_mark(source, taken)
        self._check_writable()
        return await self._feeder.mark(source, taken, complete=complete, digest=digest)

    def input_resume(self, source: str) -> tuple[InputMark | None, int]:
        """The latest mark of input ``source`` and how many of its characters the stream holds
        (0 and None: none that this state remembers)."""
        return self._journal.input_resume(source) if self._journal is not None else (None, 0)

    @property
    def input_mark(self) -> InputMark | None:
        """The last :meth:`mark_input` mark, logged in this run or restored from the state."""
        return self._journal.input_mark if self._journal is not None else None

    @property
    def chars_taken(self) -> int:
        """Characters of text taken into the stream so far (restored with the state)."""
        return self._intake.chars if self._started else 0

    @property
    def recovery(self) -> RecoveryReport | None:
        """What starting on ``state_dir`` found and restored (None without a state_dir)."""
        return self._journal.recovery if self._journal is not None else None

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
        journal = self._need_state("rescan()", ": the log it reads")
        assert self._dispatch is not None
        question = question if question is not None else self._core.explicit[0] if self._core.explicit else None
        return await journal.rescan(question, self._feeder.step, self._dispatch.score)

    def events(self) -> EventStream:
        """Subscribe to events from now on: ``async for event in engine.events(): ...``.

        The engine holds a subscriber only as long as you do: one you drop (or ``close()``,
        or leave ``async with engine.events() as events:``) stops receiving and frees its
        buffer. At most :data:`MAX_SUBSCRIBERS` are held at once (InputError beyond).
        """
        self._check_open()
        return self._subscribers.subscribe()

    def _emit(self, event: Event) -> None:
        self._subscribers.emit(event)

    def metrics(self) -> Metrics:
        """Counters and timings, for logs and dashboards (see :mod:`xl3m_stream.metrics`)."""
        return self._core.metrics()

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
        return list(self._running().replicas)

    @property
    def tokenizer(self) -> Any:
        """The scoring model's tokenizer."""
        return self._tokenizer

    @property
    def failed_segments(self) -> list[Segment]:
        """Segments whose scoring failed on every replica (kept here, not lost)."""
        return list(self._core.failed)

    @property
    def stream_tokens(self) -> int:
        """Tokens taken into the stream so far."""
        return self._intake.position

    @property
    def reader_window(self) -> int:
        """The reader's context window in tokens."""
        return self._running().first.reader.window

    def reader_tokens(self, text: str) -> int:
        """How many of the reader's tokens ``text`` takes: the unit of ``budget_for`` and
        ``answer_with``'s budget (the reader's tokenizer may differ from the scorer's)."""
        return self._running().first.reader.count(text)

    @property
    def reader_name(self) -> str:
        """Name of the model that writes the answers."""
        return self._running().first.reader_model.name

    @property
    def model_window(self) -> int:
        """The scoring model's context window in tokens (what the stream is a multiple of)."""
        return self._running().first.scoring_model.window

    @property
    def model_name(self) -> str:
        """Name of the scoring model."""
        return self._running().first.scoring_model.name

    def _running(self) -> DevicePool:
        self._check_open()
        assert self._pool is not None
        return self._pool
