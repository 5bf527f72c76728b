"""Shared fixtures: a tiny random model built in code (no download), and anyio backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from xl3m_stream.testing import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-shaped model + byte-level BPE tokenizer, as a HF directory (safetensors)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    """The tiny model loaded on the CPU through the library's loader."""
    import torch

    from xl3m_stream import models

    return models.load(str(tiny_model_dir), torch.device("cpu"), dtype="float32")


@pytest.fixture(autouse=True)
def _fast_cli_relevance(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI runs on the tiny model skip the dense embedder (see helpers.FAST_RELEVANCE); the model
    tests (and tests that set the variable themselves) keep the defaults."""
    if request.node.get_closest_marker("model") is None:
        monkeypatch.setenv("XL3M_STREAM_RELEVANCE", '["certainty", "lexical"]')


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_reader_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model whose tokenizer differs from ``tiny_model_dir``'s (other merges and ids)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-reader") / "model", vocab_size=300, seed=1)
