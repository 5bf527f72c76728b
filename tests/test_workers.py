"""DeviceThreads: jobs run on long-lived threads, from asyncio and trio alike."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from xl3m_stream.workers import DeviceThreads, _waker

BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_come_back_and_one_thread_runs_every_job(backend: str) -> None:
    async def main() -> tuple[list[int], set[int], int]:
        threads = DeviceThreads("t", 1)
        seen: set[int] = set()

        def job(i: int) -> int:
            seen.add(threading.get_ident())
            return i * i

        out = [await threads.run(lambda i=i: job(i)) for i in range(20)]
        await anyio.to_thread.run_sync(time.sleep, 0.01)  # anyio's own workers do not take its place
        out.append(await threads.run(lambda: job(5)))
        threads.close()
        return out, seen, threading.get_ident()

    out, seen, loop_thread = anyio.run(main, backend=backend)
    assert out == [i * i for i in range(20)] + [25]
    assert len(seen) == 1 and loop_thread not in seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_reaches_the_caller_and_the_thread_survives(backend: str) -> None:
    async def main() -> int:
        threads = DeviceThreads("t", 1)

        def boom() -> int:
            raise ValueError("bad batch")

        with pytest.raises(ValueError, match="bad batch"):
            await threads.run(boom)
        value = await threads.run(lambda: 7)
        threads.close()
        return value

    assert anyio.run(main, backend=backend) == 7


def test_size_threads_run_jobs_at_once() -> None:
    async def main() -> int:
        threads = DeviceThreads("t", 2)
        barrier = threading.Barrier(2, timeout=10)

        async def one() -> None:
            await threads.run(barrier.wait)

        async with anyio.create_task_group() as tg:  # with one thread the barrier would time out
            tg.start_soon(one)
            tg.start_soon(one)
        threads.close()
        return len({t.ident for t in threads.threads})

    assert anyio.run(main) == 2


def test_cancelling_the_caller_waits_for_the_job() -> None:
    async def main() -> tuple[bool, bool]:
        threads = DeviceThreads("t", 1)
        finished = threading.Event()

        def slow() -> None:
            time.sleep(0.3)
            finished.set()

        with anyio.move_on_after(0.05) as scope:
            await threads.run(slow)
        threads.close()
        return scope.cancelled_caught, finished.is_set()

    cancelled, finished = anyio.run(main)
    assert cancelled and finished  # the cancel took effect only after the job was done


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_finished_job_does_not_wait_for_the_loop_before_the_next_starts(backend: str) -> None:
    """The thread hands its result to the loop and goes on: with the loop busy (here blocked),
    the next queued job still starts. A hand-off that waits for the loop would stall it."""

    async def main() -> bool:
        threads = DeviceThreads("t", 1)
        running_a = threading.Event()
        release_a = threading.Event()
        started_b = threading.Event()

        def job_a() -> bool:
            running_a.set()
            return release_a.wait(10)

        async with anyio.create_task_group() as tg:
            # A first, on the thread; then B, queued behind it. (Started together, trio may
            # queue B first: the thread then runs B at once, and waiting for a queued job hangs.)
            tg.start_soon(threads.run, job_a)
            with anyio.fail_after(10):
                while not running_a.is_set():
                    await anyio.sleep(0.001)
                tg.start_soon(threads.run, started_b.set)
                while threads._jobs.qsize() < 1:
                    await anyio.sleep(0.001)
            release_a.set()
            b_started_while_loop_blocked = started_b.wait(5)  # blocks the event loop's thread
        threads.close()
        return b_started_while_loop_blocked

    assert anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_waking_a_loop_that_has_ended_raises_runtime_error(backend: str) -> None:
    """What a job that outlives its caller's loop meets (and DeviceThreads.run swallows)."""

    async def grab() -> Callable[[Callable[[], object]], None]:
        return _waker(anyio.lowlevel.current_token())

    wake = anyio.run(grab, backend=backend)
    with pytest.raises(RuntimeError):
        wake(lambda: None)


def test_closed_threads_refuse_jobs_and_end() -> None:
    async def main() -> DeviceThreads:
        threads = DeviceThreads("t", 2)
        await threads.run(lambda: None)
        threads.close()
        with pytest.raises(RuntimeError, match="closed"):
            await threads.run(lambda: None)
        return threads

    threads = anyio.run(main)
    for t in threads.threads:
        t.join(timeout=5)
        assert not t.is_alive()


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_bad_size_is_refused(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        DeviceThreads("t", size)  # type: ignore[arg-type]
