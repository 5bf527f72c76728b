"""Scoring dispatch: token-id batches to the device pool, score dicts back.

Each replica scores on threads of its own (:class:`~xl3m_stream.workers.DeviceThreads`, warm
for the engine's lifetime). A batch goes to the least-loaded replica; when it fails there it is
tried on the others, then halved (an out-of-memory batch may fit in two). This is the seam a
remote backend plugs into: ``score_many`` takes segments and questions and returns scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..devices import DevicePool, Replica
from ..embedding import Embedder
from ..errors import ScoringError
from ..events import ErrorEvent, Event
from ..metrics import LatencyRecorder
from ..segment import Segment
from ..workers import DeviceThreads

log = logging.getLogger("xl3m_stream.engine")

Scores = list[dict[str, float]]


class Dispatcher:
    """The local device pool as a scoring backend. ``report``: where retry events go (the
    facade emits them); ``counters["errors"]`` counts the failures."""

    def __init__(
        self, pool: DevicePool, concurrency: int, counters: dict[str, int], report: Callable[[Event], None]
    ) -> None:
        self.pool = pool
        self._counters = counters
        self._report = report
        self.threads = {r.index: DeviceThreads(f"xl3m-score-{r.index}", concurrency) for r in pool.replicas}
        # batches in flight at once: each replica runs `concurrency` and holds one more waiting in
        # its threads' queue, so a thread that finishes a batch starts the next at once instead of
        # idling while the event loop takes the scores in and dispatches again (on a near-free
        # forward the scoring thread sat idle 26% of the time without it)
        self.slots = anyio.Semaphore((concurrency + 1) * len(pool.replicas))
        self.inflight = 0
        self.seconds = 0.0
        self.latency = LatencyRecorder()

    async def acquire(self) -> None:
        """Wait for a free slot, then count a batch in flight (:meth:`release` when it is done)."""
        await self.slots.acquire()
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        self.slots.release()

    async def score(self, segments: list[Segment], question: tuple[int, ...]) -> Scores:
        """Score against one question (see :meth:`score_many`)."""
        return (await self.score_many(segments, [question]))[0]

    async def score_many(self, segments: list[Segment], questions: list[tuple[int, ...]]) -> list[Scores]:
        """Score against each question (``result[j][i]``: segment i, question j), computing each
        segment once. Raises ScoringError when every replica failed, even on one segment."""
        tried: list[int] = []
        last_error: BaseException | None = None
        token_lists = [s.tokens for s in segments]
        while (replica := self.pool.pick(exclude=tried)) is not None:
            tried.append(replica.index)
            try:
                return await self._score_on(replica, token_lists, questions)
            except Exception as exc:  # a device fault (OOM, driver error...): try elsewhere
                last_error = exc
                replica.failures += 1
                self._counters["errors"] += 1
                log.warning("scoring failed on replica %d (%s): %s", replica.index, replica.device, exc)
                self._report(
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
            first = await self.score_many(segments[:half], questions)
            second = await self.score_many(segments[half:], questions)
            return [a + b for a, b in zip(first, second)]
        raise ScoringError(f"scoring failed on every replica: {type(last_error).__name__}: {last_error}")

    async def _score_on(
        self, replica: Replica, token_lists: list[tuple[int, ...]], questions: list[tuple[int, ...]]
    ) -> list[Scores]:
        scorer = replica.scorer

        def work() -> list[Scores]:
            return scorer.score_many(token_lists, [scorer.prepare(q) for q in questions])

        replica.inflight += 1
        started = time.perf_counter()
        try:
            return await self.threads[replica.index].run(work)
        finally:
            replica.inflight -= 1
            replica.batches += 1
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
            self.latency.observe(elapsed)

    async def embed(self, work: Callable[[Embedder], Any]) -> Any:
        """``work(embedder)`` on a replica's own threads (the embedder is torch code)."""
        replica = self.pool.pick() or self.pool.first
        embedder = replica.embedder
        if embedder is None:
            raise ScoringError("the dense signal is off: no embedder is loaded")
        return await self.threads[replica.index].run(lambda: work(embedder))

    async def aclose(self) -> None:
        """Stop the threads (call when no job is running: the engine's task group has ended)."""
        for threads in self.threads.values():
            threads.close()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(threads.join, 30.0)
