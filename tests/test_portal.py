"""The thread crossing of the sync wrappers (xl3m_stream._portal): a failed start leaves no thread."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from xl3m_stream import EngineClosedError, EngineConfig, ModelLoadError, SyncAgentMemory, SyncEngine
from xl3m_stream._portal import LoopThread


def _portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "portal" in t.name]


def _settled(baseline: int, timeout: float = 5.0) -> int:
    """The thread count once the loop's worker threads have wound down (they stop, not join)."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    return threading.active_count()


class Boom(RuntimeError):
    pass


@asynccontextmanager
async def failing_enter() -> AsyncIterator[None]:
    await anyio.sleep(0)
    raise Boom("enter failed")
    yield  # pragma: no cover


@asynccontextmanager
async def failing_exit() -> AsyncIterator[str]:
    yield "ready"
    raise Boom("exit failed")


@asynccontextmanager
async def fine() -> AsyncIterator[str]:
    yield "ready"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_failed_start_leaves_no_thread_and_runs_no_more(backend: str) -> None:
    baseline = threading.active_count()
    loop = LoopThread(failing_enter(), backend, "thing", "Thing")
    with pytest.raises(Boom):
        loop.start()
    assert _settled(baseline) == baseline and not _portal_threads()
    assert not loop.running
    with pytest.raises(EngineClosedError, match="not running"):
        loop.call(anyio.sleep, 0)
    with pytest.raises(EngineClosedError, match="closed"):
        loop.start()
    loop.close()  # harmless


def test_a_failed_exit_still_stops_the_loop() -> None:
    baseline = threading.active_count()
    loop = LoopThread(failing_exit(), "asyncio", "thing", "Thing")
    loop.start()
    assert loop.running and _portal_threads()
    with pytest.raises(Boom):
        loop.close()
    assert _settled(baseline) == baseline and not _portal_threads()
    loop.close()  # harmless


def test_call_and_iterate() -> None:
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await anyio.sleep(0)
            yield i

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise Boom("midway")

    loop = LoopThread(fine(), "asyncio", "thing", "Thing")
    loop.start()
    try:
        assert loop.call(lambda x: x + 1, 1) == 2  # a plain function runs on the loop too
        assert loop.call(anyio.sleep, 0) is None
        assert list(loop.iterate(count, 40, buffer=2)) == list(range(40))
        it = loop.iterate(count, 10**6)
        assert next(it) == 0
        it.close()  # stopping early cancels the task on the loop
        got: list[int] = []
        with pytest.raises(Boom):
            got.extend(loop.iterate(broken))
        assert got == [1]
    finally:
        loop.close()
    assert not _portal_threads()


@pytest.mark.parametrize("wrapper", [SyncEngine, SyncAgentMemory])
def test_sync_wrappers_failed_start_leaves_no_thread(wrapper: type, tmp_path) -> None:
    """A model that cannot load: the error, no portal thread left, and the wrapper runs no more."""
    baseline = threading.active_count()
    thing = wrapper(EngineConfig(model=str(tmp_path / "no-such-model"), devices=["cpu"]))
    with pytest.raises(ModelLoadError):
        thing.start()
    assert _settled(baseline) == baseline and not _portal_threads()
    with pytest.raises(EngineClosedError, match="closed"):
        thing.start()
    with pytest.raises(EngineClosedError, match="closed"), thing:
        pass
    thing.close()
    assert _settled(baseline) == baseline
