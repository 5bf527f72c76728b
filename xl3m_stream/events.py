"""What the engine reports while it works: msgspec Structs, tagged so they serialise as JSON lines.

Subscribe with ``engine.events()``. Each subscriber has its own bounded buffer; a subscriber
that falls behind loses the oldest unread events and is told how many with an
:class:`EventsDropped` event, so nothing is lost silently and a slow reader never stalls ingest.
The engine holds subscribers weakly: one its owner dropped (``async for ...: break``) is gone
with its buffer, and at most ``engine.MAX_SUBSCRIBERS`` are held at once.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event. ``time`` is ``time.time()`` when it happened."""

    time: float


class SegmentScored(Event, frozen=True, kw_only=True, tag="scored"):
    seq: int
    start: int
    end: int
    score: float
    scores: dict[str, float]
    question_id: int


class SegmentKept(Event, frozen=True, kw_only=True, tag="kept"):
    seq: int
    start: int
    end: int
    score: float


class SegmentEvicted(Event, frozen=True, kw_only=True, tag="evicted"):
    seq: int
    start: int
    end: int
    score: float


class ErrorEvent(Event, frozen=True, kw_only=True, tag="error"):
    """Something failed. ``retrying`` says whether the work was handed to another attempt."""

    kind: str
    message: str
    seqs: list[int] = []
    replica: int | None = None
    retrying: bool = False


class Answered(Event, frozen=True, kw_only=True, tag="answered"):
    question: str
    seconds: float
    segments: list[int]


class Alert(Event, frozen=True, kw_only=True, tag="alert"):
    """A segment crossed a standing question's threshold (see ``Engine.watch``).

    ``question_index`` is the watch id ``Engine.watch`` returned; ``score`` is the segment's
    relevance by the watch's ``measure`` and ``threshold`` the score it had to exceed;
    ``scores`` holds every measure and ``overlap`` the lexical overlap with the question
    (when the watch's lexical gate is on). ``text`` and ``meta`` (line and time range, log fields)
    say what the segment holds; ``explanation`` is the reader's short answer to the question
    from that segment, when the watch asked for one.
    """

    question: str
    question_index: int
    seq: int
    start: int
    end: int
    score: float
    threshold: float
    text: str
    meta: dict[str, Any] | None = None
    explanation: str | None = None
    measure: str | None = None
    scores: dict[str, float] = {}
    overlap: float | None = None


class EventsDropped(Event, frozen=True, kw_only=True, tag="dropped"):
    """This subscriber fell behind: ``count`` older events were discarded for it."""

    count: int


AnyEvent = SegmentScored | SegmentKept | SegmentEvicted | ErrorEvent | Answered | Alert | EventsDropped


class EventStream:
    """One subscriber's view of the engine's events: an async iterator with a bounded buffer."""

    def __init__(self, maxlen: int, on_close: Any = None) -> None:
        self._buffer: deque[Event] = deque()
        self._maxlen = maxlen
        self._dropped = 0
        self._wakeup = anyio.Event()
        self._closed = False
        self._on_close = on_close

    def put(self, event: Event) -> None:
        """Called by the engine (event-loop thread): never blocks."""
        if self._closed:
            return
        if len(self._buffer) >= self._maxlen:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(event)
        self._wakeup.set()

    def close(self) -> None:
        """No more events will come; the iterator ends after the buffered ones."""
        self._closed = True
        self._wakeup.set()
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback(self)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._dropped:
                import time

                count, self._dropped = self._dropped, 0
                return EventsDropped(time=time.time(), count=count)
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
