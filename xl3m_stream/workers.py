"""Long-lived worker threads for one device's forward passes.

``anyio.to_thread`` hands each call to whichever worker thread is idle, starts a new one when
none is, and lets an idle one exit after a few seconds. For a model on a CPU that costs real
throughput: every thread that runs torch keeps its own OpenMP thread team and its own malloc
arena, and a batch that lands on a fresh (or long idle) thread pays again for what the last
one had warmed up, mostly as page faults on the activations' memory. Measured on the 2-core
CPU (SmolLM2-135M, fp32, batches of 8 x 256 tokens): 187k-375k minor page faults per 12,000
scored tokens on anyio's workers against 0-5k on one kept thread, and the engine at 0.90 of
the raw forward's speed against about 1.0 now (docs/PERFORMANCE.md).

:class:`DeviceThreads` keeps ``size`` threads for the engine's lifetime and runs jobs on them
from async code, on asyncio and trio alike. Only the engine uses it: the scorer stays plain
synchronous code.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")

_STOP = None


class DeviceThreads:
    """``size`` threads that run the jobs given to :meth:`run`, oldest job first.

    Threads start on the first job and end at :meth:`close` (they are daemons, so a process
    that never closes the engine still exits).
    """

    def __init__(self, name: str, size: int = 1) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size!r}")
        self.name = name
        self.size = size
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _start(self) -> None:
        while len(self._threads) < self.size:
            t = threading.Thread(target=self._loop, name=f"{self.name}-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            job()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on one of the threads and return its result (or raise its exception).

        Like ``anyio.to_thread.run_sync``, a job is never abandoned: cancelling the caller takes
        effect once the job is done (and its result is dropped).
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: the worker threads are closed")
        self._start()
        wake = _waker(anyio.lowlevel.current_token())
        done = anyio.Event()
        outcome: list[tuple[bool, object]] = []

        def job() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome.append((False, exc))
            try:
                wake(done.set)
            except RuntimeError:  # the event loop has ended: nobody waits for this job
                pass

        self._jobs.put(job)
        with anyio.CancelScope(shield=True):
            await done.wait()
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel that came meanwhile: raise it now
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[return-value]
        raise value  # type: ignore[misc]

    def close(self) -> None:
        """Let the threads end once the jobs already given are done (does not wait for them)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(_STOP)

    def join(self, timeout: float | None = None) -> bool:
        """Wait (blocking) until the threads have ended after :meth:`close`; True if they all have.

        Threads that hold torch state should end before the interpreter does: a daemon thread
        cut off at exit can abort the process ("terminate called without an active exception").
        """
        for t in self._threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    @property
    def threads(self) -> list[threading.Thread]:
        """The threads started so far."""
        return list(self._threads)


def _waker(token: anyio.lowlevel.EventLoopToken) -> Callable[[Callable[[], object]], None]:
    """How a worker thread schedules a call on the caller's event loop without waiting for it.

    ``anyio.from_thread.run_sync`` blocks the thread until the loop has run the call, so a busy
    loop stalls the device (py-spy: 10% of the scoring thread's time on a near-free forward; on
    two CPU cores the queued batch hid it, docs/PERFORMANCE.md). asyncio's loop and trio's token both take a
    call from another thread and return at once; both raise a RuntimeError once their loop has
    ended. Another backend falls back to the blocking call.
    """
    native = token.native_token
    soon = getattr(native, "call_soon_threadsafe", None) or getattr(native, "run_sync_soon", None)
    if callable(soon):
        return lambda fn: soon(fn)
    return lambda fn: anyio.from_thread.run_sync(fn, token=token)
