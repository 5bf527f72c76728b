"""Engine metrics: the snapshot, the latency recorder, and the Prometheus export."""

from __future__ import annotations

import math
import sys

import msgspec
import pytest

from xl3m_stream import Engine, EngineConfig
from xl3m_stream.metrics import LatencyRecorder, Metrics, export_prometheus

pytestmark = pytest.mark.anyio


def test_latency_recorder_buckets_and_quantiles() -> None:
    rec = LatencyRecorder(buckets=(0.1, 1.0), recent=4)
    for s in (0.05, 0.5, 0.5, 2.0, 0.01):
        rec.observe(s)
    snap = rec.snapshot()
    assert snap.count == 5 and snap.sum_s == pytest.approx(3.06)
    # cumulative: <=0.1: 0.05 and 0.01; <=1.0: + two 0.5s; +Inf: + 2.0
    assert snap.buckets == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert snap.recent == 4  # quantiles over the last four: 0.5, 0.5, 2.0, 0.01
    assert (snap.p50_s, snap.max_s) == (0.5, 2.0)
    assert snap.mean_s == pytest.approx(3.06 / 5)
    with pytest.raises(ValueError):
        rec.observe(-1.0)
    with pytest.raises(ValueError):
        LatencyRecorder(buckets=(1.0, 0.5))
    empty = LatencyRecorder().snapshot()
    assert empty.count == 0 and empty.p50_s is None and empty.mean_s is None


async def test_engine_metrics_count_the_stream(tiny_model_dir, anyio_backend) -> None:
    config = EngineConfig(
        model=str(tiny_model_dir), devices=["cpu"], segment_tokens=32, batch_size=4, batch_wait_ms=1, dtype="float32"
    )
    async with Engine(config) as engine:
        before = engine.metrics()
        assert before.tokens_in == 0 and before.scoring_latency.count == 0 and before.alerts == 0
        engine.watch("Which service failed?", threshold=-1e30, warmup=0, cooldown=0, min_overlap=None)
        await engine.process(["The grass is green. The sky is blue.\n" * 30])
        m = engine.metrics()
        stats = engine.stats()
        assert isinstance(m, Metrics)
        assert m.tokens_in == stats.tokens_in > 0
        assert m.segments_scored == stats.segments_scored == m.segments_cut
        assert m.batches == stats.batches and m.scoring_latency.count >= m.batches
        assert m.queue_depth == 0 and m.inflight_batches == 0
        assert m.watches == 1 and m.alerts == m.segments_scored
        assert m.scoring_seconds == pytest.approx(m.scoring_latency.sum_s)
        assert m.scoring_latency.p50_s is not None and m.scoring_latency.p50_s > 0
        decoded = msgspec.json.decode(msgspec.json.encode(m))
        assert decoded["tokens_in"] == m.tokens_in


async def test_prometheus_export(tiny_model_dir, anyio_backend) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    config = EngineConfig(
        model=str(tiny_model_dir), devices=["cpu"], segment_tokens=32, batch_size=4, batch_wait_ms=1, dtype="float32"
    )
    async with Engine(config) as engine:
        collector = export_prometheus(engine, registry)
        await engine.process(["The grass is green. The sky is blue.\n" * 10])
        text = prometheus_client.generate_latest(registry).decode()
        m = engine.metrics()
        assert f"xl3m_stream_tokens_in_total {float(m.tokens_in)}" in text
        assert f"xl3m_stream_segments_scored_total {float(m.segments_scored)}" in text
        assert "xl3m_stream_queue_depth 0.0" in text
        assert f'xl3m_stream_scoring_latency_seconds_bucket{{le="+Inf"}} {float(m.scoring_latency.count)}' in text
        assert registry.get_sample_value("xl3m_stream_alerts_total") == 0.0
        registry.unregister(collector)
        assert "xl3m_stream" not in prometheus_client.generate_latest(registry).decode()


def test_prometheus_missing_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'xl3m-stream\[prometheus\]'"):
        export_prometheus(object())


def test_prometheus_needs_an_engine() -> None:
    pytest.importorskip("prometheus_client")
    with pytest.raises(TypeError):
        export_prometheus(object())
