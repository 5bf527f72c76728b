"""The engine's event subscribers: each ``events()`` stream buffers its own events; the engine
holds them weakly, so one its owner dropped (``async for ...: break``) goes with it."""

from __future__ import annotations

import weakref

from ..errors import InputError
from ..events import Event, EventStream

MAX_SUBSCRIBERS = 256
"""``events()`` subscribers held at once (each buffers up to ``events_buffer`` events)."""


class Subscribers:
    def __init__(self, buffer: int) -> None:
        self._buffer = buffer
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()

    def subscribe(self) -> EventStream:
        if len(self._streams) >= MAX_SUBSCRIBERS:
            raise InputError(
                f"{MAX_SUBSCRIBERS} event subscribers are open: close one (or drop it) before subscribing again"
            )
        stream = EventStream(self._buffer, on_close=self._streams.discard)
        self._streams.add(stream)
        return stream

    def emit(self, event: Event) -> None:
        for stream in list(self._streams):
            stream.put(event)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()
