"""The thread crossing of the synchronous wrappers (:class:`~xl3m_stream.SyncEngine`,
:class:`~xl3m_stream.SyncAgentMemory`), written once.

:class:`LoopThread` runs an async context manager (the engine, the memory) on an event loop of
its own in a background thread (an anyio blocking portal): :meth:`~LoopThread.start` enters it,
:meth:`~LoopThread.call` runs a coroutine function (or a plain function) there and returns its
result, :meth:`~LoopThread.iterate` turns an async iterator into a blocking one, and
:meth:`~LoopThread.close` exits it and stops the loop. A start that fails (or is interrupted)
leaves nothing behind: the target is exited if it was entered, the loop's remaining tasks are
cancelled and its thread is joined before the error propagates.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Literal, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .errors import EngineClosedError

T = TypeVar("T")


class LoopThread:
    """An async context manager entered on an event loop in a background thread.

    It runs once: :meth:`start` enters it (again while it runs: nothing happens), :meth:`close`
    exits it and stops the loop (again: nothing happens); starting it after that, or after a
    start that failed, raises :class:`EngineClosedError`.
    """

    def __init__(self, target: AbstractAsyncContextManager[Any], backend: str, what: str, usage: str) -> None:
        """``what``/``usage`` name the thing in messages: ``"engine"``, ``"SyncEngine"``."""
        self._target = target
        self._backend = backend
        self._what = what
        self._usage = usage
        self._lock = threading.Lock()
        self._state: Literal["new", "running", "closed"] = "new"
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._target_cm: AbstractContextManager[Any] | None = None

    @property
    def running(self) -> bool:
        return self._state == "running"

    def start(self) -> None:
        with self._lock:
            if self._state == "running":
                return
            if self._state == "closed":
                raise EngineClosedError(f"this {self._what} was closed (it runs once): create a new one")
            self._state = "closed"  # unless everything below works
            portal_cm = start_blocking_portal(self._backend)
            portal = portal_cm.__enter__()
            try:
                target_cm = portal.wrap_async_context_manager(self._target)
                target_cm.__enter__()
            except BaseException:
                # The error goes to the portal too: it cancels what is still running on the loop
                # (an interrupted enter, anything the target left) instead of waiting for it,
                # then the loop's thread is joined.
                _exit_portal(portal_cm, *sys.exc_info())
                raise
            self._portal_cm, self._portal, self._target_cm = portal_cm, portal, target_cm
            self._state = "running"

    def close(self) -> None:
        with self._lock:
            target_cm, self._target_cm = self._target_cm, None
            portal_cm, self._portal_cm = self._portal_cm, None
            self._portal = None
            self._state = "closed"
            try:
                if target_cm is not None:
                    target_cm.__exit__(None, None, None)
            except BaseException:
                if portal_cm is not None:
                    _exit_portal(portal_cm, *sys.exc_info())
                raise
            if portal_cm is not None:
                portal_cm.__exit__(None, None, None)

    @property
    def portal(self) -> BlockingPortal:
        portal = self._portal
        if portal is None:
            raise EngineClosedError(f"the {self._what} is not running: use `with {self._usage}(...) as {self._what}:`")
        return portal

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` run on the loop (awaited when it is a coroutine function)."""
        return self.portal.call(lambda: fn(*args, **kwargs))

    def iterate(
        self, make: Callable[..., AsyncIterator[T]], *args: Any, buffer: int = 16, **kwargs: Any
    ) -> Iterator[T]:
        """The items of ``make(*args, **kwargs)`` (an async iterator, iterated by one task on the
        loop, at most ``buffer`` items ahead) as a blocking iterator. Its error is raised here;
        closing the iterator early (``break``) cancels the task."""
        portal = self.portal
        send, receive = anyio.create_memory_object_stream[T](max_buffer_size=buffer)

        async def pump() -> None:
            async with send:
                async for item in make(*args, **kwargs):
                    await send.send(item)

        future = portal.start_task_soon(pump)
        try:
            while True:
                try:
                    item = portal.call(receive.receive)
                except anyio.EndOfStream:
                    break
                yield item
            future.result()  # re-raise what went wrong on the loop
        finally:
            if not future.done():
                future.cancel()
            portal.call(receive.aclose)


def _exit_portal(portal_cm: AbstractContextManager[BlockingPortal], *exc: Any) -> None:
    """Stop the portal after an error: its remaining tasks are cancelled, its thread joined; an
    error stopping it is not raised over the first one."""
    try:
        portal_cm.__exit__(*exc)
    except Exception:
        pass
