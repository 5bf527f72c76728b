"""Helpers shared by test modules (import them as ``from helpers import ...``)."""

from __future__ import annotations

from typing import Any

from xl3m_stream import EngineConfig

FAST_RELEVANCE = ["certainty", "lexical"]
"""Signals of the tiny-model tests: the dense embedder costs far more than the tiny model, so it
is tested where it matters (tests/test_relevance.py, the model tests), not in every engine."""


def tiny_config(model_dir: Any, **changes: Any) -> EngineConfig:
    """An engine config for the tiny test model: short segments, a small store, quick answers."""
    base: dict[str, Any] = dict(
        model=str(model_dir),
        devices=["cpu"],
        segment_tokens=32,
        batch_size=4,
        batch_wait_ms=1,
        store_segments=6,
        context_tokens=160,
        max_new_tokens=6,
        question="What is the pass key?",
        dtype="float32",  # tests compare numbers; "auto" picks bf16 on CPUs with AMX or AVX512-BF16
        relevance=FAST_RELEVANCE,
    )
    base.update(changes)
    return EngineConfig(**base)
