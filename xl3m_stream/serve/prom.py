"""Every stream's ``engine.metrics()`` in the Prometheus text format, with a ``stream`` label.

Rendered here rather than through ``prometheus_client`` (the ``prometheus`` extra): its
collector (:func:`xl3m_stream.metrics.export_prometheus`) exposes one engine without labels,
while a server holds many, and the text format is small enough to write directly. The metric
names and help texts are the collector's, so dashboards built on either read the same series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..metrics import _COUNTERS, _GAUGES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(streams: Iterable[tuple[str, Any]], namespace: str = "xl3m_stream") -> str:
    """``streams``: ``(name, Metrics)`` pairs."""
    streams = list(streams)
    out: list[str] = [
        f"# HELP {namespace}_streams Streams open on this server",
        f"# TYPE {namespace}_streams gauge",
        f"{namespace}_streams {len(streams)}",
    ]
    for kind, table in (("counter", _COUNTERS), ("gauge", _GAUGES)):
        for name, doc in table:
            full = f"{namespace}_{name}" + ("_total" if kind == "counter" else "")
            out += [f"# HELP {full} {doc}", f"# TYPE {full} {kind}"]
            out += [f'{full}{{stream="{_label(s)}"}} {_num(getattr(m, name))}' for s, m in streams]
    hist = f"{namespace}_scoring_latency_seconds"
    out += [f"# HELP {hist} Wall time of one scoring batch", f"# TYPE {hist} histogram"]
    for s, m in streams:
        lat, label = m.scoring_latency, _label(s)
        for bound, count in lat.buckets:
            out.append(f'{hist}_bucket{{stream="{label}",le="{_num(bound)}"}} {count}')
        out.append(f'{hist}_sum{{stream="{label}"}} {_num(lat.sum_s)}')
        out.append(f'{hist}_count{{stream="{label}"}} {lat.count}')
    return "\n".join(out) + "\n"
