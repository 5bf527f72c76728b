"""Segments cut and waiting to be scored: backpressure for intake, batches for scoring,
and the wait for "everything fed so far is scored" that ``ask``, ``drain`` and ``flush`` need."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import anyio
from sortedcontainers import SortedSet

from ..segment import Segment


@dataclass
class Pending:
    """A segment waiting to be scored, with the question it is scored against."""

    segment: Segment
    question: tuple[int, ...] | None  # rolling window (None: the explicit question at dispatch)


class ScoringQueue:
    """Pending segments in stream order. ``keep_unscored``: remember every segment cut and not
    yet scored (a state dir's snapshot keeps them aside for the next start)."""

    def __init__(self, max_pending: int, *, keep_unscored: bool) -> None:
        self.max_pending = max_pending
        self.pending: deque[Pending] = deque()
        self.unscored: SortedSet = SortedSet()  # seqs cut and not scored (or failed) yet
        self.not_scored: dict[int, Pending] | None = {} if keep_unscored else None
        self.flush_now = False  # score what is pending now, without waiting for a full batch
        self._work = anyio.Event()
        self._progress = anyio.Event()

    def __len__(self) -> int:
        return len(self.pending)

    def put(self, items: Iterable[Pending]) -> int:
        """Queue ``items`` (in stream order); returns how many."""
        n = 0
        for item in items:
            self.pending.append(item)
            self.unscored.add(item.segment.seq)
            if self.not_scored is not None:
                self.not_scored[item.segment.seq] = item
            n += 1
        if n:
            self._work.set()
        return n

    def wake(self) -> None:
        """Score what is pending now (a flush, an ask)."""
        self.flush_now = True
        self._work.set()

    async def next_batch(self, size: int, wait_ms: float) -> list[Pending]:
        """Wait for work, then up to ``size`` pending segments sharing one question (waiting up
        to ``wait_ms`` for a full batch unless a flush asks for the rest now)."""
        while not self.pending:
            self._work = anyio.Event()
            await self._work.wait()
        if len(self.pending) < size and wait_ms > 0 and not self.flush_now:
            with anyio.move_on_after(wait_ms / 1000):
                while len(self.pending) < size and not self.flush_now:
                    self._work = anyio.Event()
                    await self._work.wait()
        first = self.pending.popleft()
        batch = [first]
        rolling = first.question is not None  # rolling windows differ: the first one's is used
        while self.pending and len(batch) < size and (self.pending[0].question is not None) == rolling:
            batch.append(self.pending.popleft())
        if not self.pending:
            self.flush_now = False
        self.notify()  # room for fed segments: release backpressure
        return batch

    def done(self, batch: list[Pending]) -> None:
        """``batch`` was scored or failed: it no longer holds back ``drain``."""
        for p in batch:
            self.unscored.discard(p.segment.seq)
        self.notify()

    def scored(self, segments: list[Segment]) -> None:
        """Segments scored and offered to the store: a snapshot need not keep them aside."""
        if self.not_scored is not None:
            for seg in segments:
                self.not_scored.pop(seg.seq, None)

    def waiting(self) -> list[Pending]:
        """Every segment cut and not scored yet, in stream order (for a snapshot)."""
        return [p for _, p in sorted((self.not_scored or {}).items())]

    async def backpressure(self, closed: Callable[[], bool]) -> None:
        """Wait while more than ``max_pending`` segments wait to be scored."""
        while len(self.pending) > self.max_pending and not closed():
            await self.wait()

    async def drain(self, upto_seq: int) -> None:
        """Wait until every segment up to ``upto_seq`` has been scored (or has failed)."""
        while self.unscored and self.unscored[0] <= upto_seq:
            self.wake()
            await self.wait()

    async def wait(self) -> None:
        """Wait for progress: a batch taken or finished."""
        event = self._progress
        await event.wait()

    def notify(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()
