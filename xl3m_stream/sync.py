"""A synchronous wrapper around :class:`~xl3m_stream.Engine` for scripts and notebooks.

The engine runs on an event loop in a background thread (an anyio blocking portal, see
:mod:`xl3m_stream._portal`); every method here is the engine's method of the same name, called
through the portal. No logic is duplicated: this module only crosses the sync/async boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Iterator, Sequence
from typing import Any, Generic, Literal, TypeVar, overload

import anyio

from ._portal import LoopThread
from .config import EngineConfig
from .devices import Replica
from .engine import Answer, Engine, EngineStats
from .errors import EngineClosedError
from .events import Event, EventStream
from .inference import KeyContext
from .metrics import Metrics
from .monitor import DEFAULT_COOLDOWN, DEFAULT_WATCH_MEASURE, Threshold, WatchStats
from .persistence import InputMark, RecoveryReport
from .segment import Segment
from .sources import DecodeStats
from .store import SegmentStore

T = TypeVar("T")


class _View(Generic[T]):
    """A read-only attribute of :class:`SyncEngine`: the engine's attribute of the same name,
    read on the engine's event loop."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _View[T]: ...
    @overload
    def __get__(self, obj: SyncEngine, objtype: type | None = None) -> T: ...
    def __get__(self, obj: SyncEngine | None, objtype: type | None = None) -> T | _View[T]:
        if obj is None:
            return self
        engine, name = obj.engine, self._name
        return obj._call(lambda: getattr(engine, name))  # type: ignore[no-any-return]


class SyncEngine:
    """``with SyncEngine(config) as engine: engine.feed(text); print(engine.ask(q).text)``."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        backend: str = "asyncio",
        **overrides: Any,
    ) -> None:
        """As :class:`Engine` (``model``/``tokenizer``: a model object you already hold, see there);
        ``backend``: the event loop the engine runs on in its thread (``"asyncio"`` or ``"trio"``)."""
        self._engine = Engine(config, model=model, tokenizer=tokenizer, **overrides)
        self._loop = LoopThread(self._engine, backend, "engine", "SyncEngine")

    @property
    def config(self) -> EngineConfig:
        return self._engine.config

    @property
    def engine(self) -> Engine:
        """The underlying async engine (use it only through this wrapper's portal)."""
        return self._engine

    def start(self) -> SyncEngine:
        """Start the engine (load the model, open the state); while it runs this does nothing.
        An engine runs once: after :meth:`close` (or a failed start) this raises EngineClosedError."""
        self._loop.start()
        return self

    def close(self) -> None:
        """Stop the engine (final snapshot with a state_dir); closing again does nothing."""
        self._loop.close()

    def __enter__(self) -> SyncEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._loop.call(fn, *args, **kwargs)

    def feed(self, data: str | bytes | Sequence[int] | Any) -> int:
        return self._call(self._engine.feed, data)

    def process(self, source: AsyncIterable[Any] | Iterable[Any], *, flush: bool = True) -> int:
        """Feed every item of ``source``, then flush. A synchronous iterable is read here, in the
        calling thread (a blocking source does not stall the engine's loop); an async one is
        read on the engine's loop."""
        if isinstance(source, AsyncIterable):
            return self._call(self._engine.process, source, flush=flush)
        total = 0
        for item in source:
            total += self.feed(item)
        if flush:
            total += self.flush()
        return total

    def flush(self) -> int:
        return self._call(self._engine.flush)

    def drain(self) -> None:
        self._call(self._engine.drain)

    def wait_for_room(self) -> None:
        self._call(self._engine.wait_for_room)

    def set_question(self, question: str | None) -> None:
        self._call(self._engine.set_question, question)

    def ask(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> Answer:
        """Answer ``question`` (see :meth:`Engine.ask`)."""
        return self._call(self._engine.ask, question, rescore=rescore, max_new_tokens=max_new_tokens)

    def ask_stream(
        self, question: str | None = None, *, rescore: str | None = None, max_new_tokens: int | None = None
    ) -> Iterator[str]:
        """Yield answer text pieces as they are generated (closing it early stops the generation)."""
        return self._loop.iterate(self._engine.ask_stream, question, rescore=rescore, max_new_tokens=max_new_tokens)

    def key_context(self, question: str | None = None, *, rescore: str | None = None) -> KeyContext:
        """The selected context for ``question`` without generating (see :meth:`Engine.key_context`)."""
        return self._call(self._engine.key_context, question, rescore=rescore)

    def budget_for(self, question: str, *, max_new_tokens: int | None = None, whole_window: bool = False) -> int:
        """The key-context budget for ``question`` in the reader's tokens (see :meth:`Engine.budget_for`)."""
        return self._call(self._engine.budget_for, question, max_new_tokens=max_new_tokens, whole_window=whole_window)

    def answer_with(
        self,
        segments: Sequence[Segment],
        question: str,
        *,
        scores: Sequence[float | None] | None = None,
        max_new_tokens: int | None = None,
        budget: int | None = None,
    ) -> Answer:
        """Answer from segments you chose (see :meth:`Engine.answer_with`)."""
        return self._call(
            self._engine.answer_with, segments, question, scores=scores, max_new_tokens=max_new_tokens, budget=budget
        )

    def events(self) -> SyncEventStream:
        """Subscribe to events from now on (see :meth:`Engine.events`):
        ``with engine.events() as events: for event in events: ...`` or ``events.get(timeout=1)``."""
        return SyncEventStream(self._call(self._engine.events), self._loop)

    def explained(self) -> None:
        """Wait until every alert waiting for its explanation has been emitted."""
        self._call(self._engine.explained)

    def mark_input(self, source: str, taken: int, *, complete: bool = False, digest: str = "") -> InputMark:
        """Record how far an input was taken (see :meth:`Engine.mark_input`)."""
        return self._call(self._engine.mark_input, source, taken, complete=complete, digest=digest)

    def input_resume(self, source: str) -> tuple[InputMark | None, int]:
        return self._call(self._engine.input_resume, source)

    def reader_tokens(self, text: str) -> int:
        """How many of the reader's tokens ``text`` takes (the unit of the budget)."""
        return self._call(self._engine.reader_tokens, text)

    def checkpoint(self) -> None:
        """Write a snapshot to the state directory now (see :meth:`Engine.checkpoint`)."""
        self._call(self._engine.checkpoint)

    def rescan(self, question: str | None = None) -> int:
        """Score the whole kept stream against ``question`` (see :meth:`Engine.rescan`)."""
        return self._call(self._engine.rescan, question)

    @property
    def recovery(self) -> RecoveryReport | None:
        """What starting on the state directory restored (see :attr:`Engine.recovery`)."""
        return self._engine.recovery

    # read-only views of the engine, read on its loop (the engine changes them there)
    store: _View[SegmentStore] = _View("The candidate store (read it; do not modify it).")
    replicas: _View[list[Replica]] = _View("The model replicas, one per device.")
    failed_segments: _View[list[Segment]] = _View("Segments whose scoring failed on every replica.")
    stream_tokens: _View[int] = _View("Tokens taken into the stream so far.")
    input_mark: _View[InputMark | None] = _View("The last input mark logged or restored.")
    chars_taken: _View[int] = _View("Characters of text taken in so far.")
    reader_window: _View[int] = _View("The reader's context window in tokens.")
    reader_name: _View[str] = _View("Name of the model that writes the answers.")
    model_window: _View[int] = _View("The scoring model's context window in tokens.")
    model_name: _View[str] = _View("Name of the scoring model.")

    @property
    def decode_stats(self) -> DecodeStats:
        """Counters of bytes fed: invalid UTF-8 replaced, NUL bytes removed (readable after close)."""
        return self._engine.decode_stats

    @property
    def tokenizer(self) -> Any:
        """The scoring model's tokenizer."""
        return self._engine.tokenizer

    def stats(self) -> EngineStats:
        return self._call(self._engine.stats)

    def metrics(self) -> Metrics:
        return self._call(self._engine.metrics)

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
        """Register a standing question (see :meth:`Engine.watch`); returns its id."""
        return self._call(
            self._engine.watch,
            question,
            threshold=threshold,
            measure=measure,
            warmup=warmup,
            cooldown=cooldown,
            min_score=min_score,
            min_overlap=min_overlap,
            explain=explain,
        )

    def unwatch(self, watch_id: int) -> None:
        self._call(self._engine.unwatch, watch_id)

    def watches(self) -> list[WatchStats]:
        return self._call(self._engine.watches)


_END = object()


class SyncEventStream:
    """:class:`~xl3m_stream.events.EventStream` for synchronous code: iterate it (each step
    waits for the next event; it ends when the stream is closed) or :meth:`get` with a timeout.
    Close it (or leave ``with``) to stop receiving; the engine's close ends it too."""

    def __init__(self, stream: EventStream, loop: LoopThread) -> None:
        self._stream = stream
        self._loop = loop

    def _next(self, timeout: float | None) -> object:
        """The next event, ``_END`` once the stream has ended, None when ``timeout`` passes."""
        stream = self._stream

        async def next_event() -> object:
            with anyio.move_on_after(timeout):
                try:
                    return await stream.__anext__()
                except StopAsyncIteration:
                    return _END
            return None

        return self._loop.call(next_event)

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None when ``timeout`` seconds pass first or the stream has ended."""
        got = self._next(timeout)
        return None if got is _END else got  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                got = self._next(None)
            except EngineClosedError:
                return  # the engine closed: no more events can come
            if got is _END:
                return
            yield got  # type: ignore[misc]

    def close(self) -> None:
        try:
            self._loop.call(self._stream.close)
        except EngineClosedError:
            self._stream.close()  # the loop is gone; nothing runs there any more

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
