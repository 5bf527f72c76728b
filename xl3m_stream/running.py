"""Running statistics of a score stream: the last ``window`` values, their mean, spread and
percentiles. Used by watches (relative thresholds, :mod:`xl3m_stream.monitor`) and by fused
relevance (each signal normalised against its own recent values, :mod:`xl3m_stream.relevance`).
Plain synchronous code."""

from __future__ import annotations

import math
from collections import deque

from sortedcontainers import SortedList

DEFAULT_WINDOW = 4096
"""Recent scores the statistics are computed from (older ones are forgotten: drift)."""


class RunningScores:
    """The last ``window`` scores of one watch: exact percentiles, mean and standard deviation.

    A sorted list gives percentiles in O(log n); running sums give the mean and variance
    (re-summed now and then, so float error does not build up over an endless stream).
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        self.window = window
        self.count = 0
        """Scores seen in all (the window holds the last ``window`` of them)."""
        self._recent: deque[float] = deque()
        self._sorted = SortedList()
        self._sum = 0.0
        self._sumsq = 0.0
        self._since_resum = 0

    def add(self, score: float) -> None:
        if not math.isfinite(score):
            raise ValueError(f"score must be finite, got {score!r}")
        self.count += 1
        self._recent.append(score)
        self._sorted.add(score)
        self._sum += score
        self._sumsq += score * score
        if len(self._recent) > self.window:
            old = self._recent.popleft()
            self._sorted.remove(old)
            self._sum -= old
            self._sumsq -= old * old
        self._since_resum += 1
        if self._since_resum >= self.window:
            self._sum = math.fsum(self._recent)
            self._sumsq = math.fsum(x * x for x in self._recent)
            self._since_resum = 0

    def __len__(self) -> int:
        return len(self._recent)

    @property
    def mean(self) -> float:
        return self._sum / len(self._recent) if self._recent else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation of the window (0 for one score, NaN for none)."""
        n = len(self._recent)
        if n == 0:
            return math.nan
        mean = self._sum / n
        return math.sqrt(max(0.0, self._sumsq / n - mean * mean))

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0..1) of the window, interpolated linearly between ranks."""
        n = len(self._sorted)
        if n == 0:
            return math.nan
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        a, b = self._sorted[lo], self._sorted[hi]
        return a + (b - a) * (pos - lo)
