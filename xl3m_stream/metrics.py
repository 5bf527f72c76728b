"""Counters and timings of a running engine, and their export to Prometheus.

``engine.metrics()`` returns a :class:`Metrics` snapshot: tokens in, segments cut and
scored, the scoring queue's depth, batches in flight, the store's size, alerts raised, and
the latency of scoring batches (a cumulative histogram plus quantiles of recent batches).
It is a msgspec Struct, so ``msgspec.json.encode(engine.metrics())`` logs it.

:func:`export_prometheus` registers a collector that reads a fresh snapshot on every scrape
(``prometheus_client`` is an optional extra: ``pip install 'xl3m-stream[prometheus]'``)::

    from prometheus_client import start_http_server
    from xl3m_stream.metrics import export_prometheus

    export_prometheus(engine)
    start_http_server(9100)

Plain synchronous code; reading a snapshot from another thread (a scrape) is safe: it only
reads counters.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

__all__ = ["LATENCY_BUCKETS", "EngineStats", "Latency", "LatencyRecorder", "Metrics", "export_prometheus"]

LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds (seconds) of the scoring-latency histogram; a last ``+Inf`` bucket is implied."""


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Scoring-batch latency: a cumulative histogram over all batches, quantiles over recent ones."""

    count: int
    sum_s: float
    buckets: list[tuple[float, int]]
    """``(upper bound in seconds, batches at most that long)``, cumulative; the last bound is inf."""
    recent: int
    """How many recent batches the quantiles below are taken over."""
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | None

    @property
    def mean_s(self) -> float | None:
        return self.sum_s / self.count if self.count else None


class LatencyRecorder:
    """Records durations into fixed histogram buckets and a window of recent values."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS, recent: int = 1024) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(bounds) or len(set(bounds)) != len(bounds) or bounds[0] <= 0:
            raise ValueError("buckets must be positive, increasing upper bounds")
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._recent: deque[float] = deque(maxlen=recent)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        if not seconds >= 0:  # also rejects NaN
            raise ValueError(f"a duration must be >= 0, got {seconds!r}")
        for i, bound in enumerate(self._bounds):
            if seconds <= bound:
                self._counts[i] += 1
                break
        self._recent.append(seconds)
        self.count += 1
        self.sum += seconds

    def snapshot(self) -> Latency:
        cumulative = []
        running = 0
        for bound, n in zip(self._bounds, list(self._counts)):
            running += n
            cumulative.append((bound, running))
        recent = sorted(self._recent)

        def q(p: float) -> float | None:
            if not recent:
                return None
            return recent[min(len(recent) - 1, math.ceil(p * len(recent)) - 1)]

        return Latency(
            count=self.count,
            sum_s=self.sum,
            buckets=cumulative,
            recent=len(recent),
            p50_s=q(0.5),
            p90_s=q(0.9),
            p99_s=q(0.99),
            max_s=recent[-1] if recent else None,
        )


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of an engine's counters (``engine.metrics()``). Counters only ever grow."""

    time: float
    """``time.time()`` of the snapshot."""
    tokens_in: int
    segments_cut: int
    segments_scored: int
    segments_failed: int
    scored_tokens: int
    batches: int
    queue_depth: int
    """Segments cut and waiting to be scored (backpressure starts at ``max_pending_segments``)."""
    inflight_batches: int
    store_segments: int
    store_tokens: int
    scoring_seconds: float
    """Wall time spent in scoring calls, summed over batches (overlapping batches add up)."""
    scoring_latency: Latency
    watches: int
    alerts: int
    """Alerts raised since the engine started (watches removed since included)."""
    asks: int
    errors: int


# --------------------------------------------------------------------------------------
# Prometheus

_COUNTERS = (
    ("tokens_in", "Tokens taken into the stream"),
    ("segments_cut", "Segments cut from the stream"),
    ("segments_scored", "Segments scored"),
    ("segments_failed", "Segments whose scoring failed on every replica"),
    ("scored_tokens", "Tokens in scored segments"),
    ("batches", "Scoring batches completed"),
    ("scoring_seconds", "Wall time spent scoring, summed over batches"),
    ("alerts", "Alerts raised by standing questions"),
    ("asks", "Questions answered"),
    ("errors", "Errors (failed scoring attempts included)"),
)
_GAUGES = (
    ("queue_depth", "Segments waiting to be scored"),
    ("inflight_batches", "Scoring batches in flight"),
    ("store_segments", "Segments held as candidates"),
    ("store_tokens", "Tokens held as candidates"),
    ("watches", "Standing questions watched"),
)


class EngineStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters, readable at any time with ``engine.stats()``."""

    tokens_in: int
    segments_cut: int
    segments_scored: int
    segments_failed: int
    batches: int
    pending_segments: int
    inflight_batches: int
    store_segments: int
    store_tokens: int
    scoring_seconds: float
    scored_tokens: int
    asks: int
    errors: int

    @classmethod
    def of(cls, metrics: Metrics) -> EngineStats:
        """The stats in ``metrics`` (``pending_segments`` is its ``queue_depth``)."""
        names = {f.name for f in msgspec.structs.fields(cls)} - {"pending_segments"}
        return cls(pending_segments=metrics.queue_depth, **{n: getattr(metrics, n) for n in names})


class PrometheusCollector:
    """A ``prometheus_client`` collector reading ``source.metrics()`` at each scrape."""

    def __init__(self, source: Any, namespace: str = "xl3m_stream") -> None:
        self._source = source
        self._ns = namespace

    def describe(self) -> Iterator[Any]:
        return iter(())  # metrics are only known at collect time; nothing to check up front

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m: Metrics = self._source.metrics()
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"{self._ns}_{name}", doc, value=float(getattr(m, name)))
        for name, doc in _GAUGES:
            yield GaugeMetricFamily(f"{self._ns}_{name}", doc, value=float(getattr(m, name)))
        lat = m.scoring_latency
        buckets = [("+Inf" if math.isinf(b) else repr(b), n) for b, n in lat.buckets]
        yield HistogramMetricFamily(
            f"{self._ns}_scoring_latency_seconds",
            "Wall time of one scoring batch",
            buckets=buckets,
            sum_value=lat.sum_s,
        )


def export_prometheus(engine: Any, registry: Any = None, *, namespace: str = "xl3m_stream") -> PrometheusCollector:
    """Expose ``engine.metrics()`` to Prometheus: registers a collector and returns it.

    ``registry`` defaults to ``prometheus_client.REGISTRY`` (what ``start_http_server``
    serves). Unregister with ``registry.unregister(collector)``. Raises ImportError with the
    install command when ``prometheus_client`` is missing.
    """
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("export_prometheus needs prometheus_client: pip install 'xl3m-stream[prometheus]'") from None
    if not callable(getattr(engine, "metrics", None)):
        raise TypeError(f"export_prometheus needs an engine with .metrics(), got {type(engine).__name__}")
    collector = PrometheusCollector(engine, namespace)
    (registry if registry is not None else prometheus_client.REGISTRY).register(collector)
    return collector
