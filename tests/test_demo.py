"""The demo's passkey document: the same text as ``make_sample("passkey", ...)``, produced in pieces."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from xl3m_stream.cli import main
from xl3m_stream.demo import passkey_document
from xl3m_stream.evaluate.tasks import make_sample
from xl3m_stream.tokenizer import IncrementalTokenizer


@pytest.fixture(scope="module")
def counters(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    def count_stream(pieces) -> int:
        itok = IncrementalTokenizer(tok)
        return sum(len(itok.push(p)) for p in pieces) + len(itok.flush())

    return count, count_stream


def check_same(counters, length: int, seed: int, depth: float | None, size: int = 32768) -> None:
    count, count_stream = counters
    sample = make_sample("passkey", length=length, seed=seed, depth=depth, count_tokens=count)
    doc = passkey_document(length, seed=seed, depth=depth, count_tokens=count, count_stream=count_stream)
    pieces = list(doc.pieces(size))
    assert "".join(pieces) == sample.context
    assert all(len(p) == size for p in pieces[:-1])
    assert (doc.tokens, doc.chars) == (sample.meta["tokens"], len(sample.context))
    assert (doc.question, doc.answer) == (sample.question, sample.answers[0])


@pytest.mark.parametrize(
    ("length", "seed", "depth"),
    [
        (100_000, 7, (7 * 0.618034) % 1.0),  # `xl3m-stream demo` with its defaults
        (100_000, 3, 0.0),
        (30_000, 11, 1.0),
        (5_000, 2, None),
        (1, 0, 0.5),
    ],
)
def test_the_document_is_make_samples(counters, length: int, seed: int, depth: float | None) -> None:
    check_same(counters, length, seed, depth)


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 4000),
    seed=st.integers(0, 10**6),
    depth=st.none() | st.floats(0, 1),
    size=st.integers(1, 5000),
)
def test_the_document_is_make_samples_for_any_size(counters, length, seed, depth, size) -> None:
    check_same(counters, length, seed, depth, size)


def test_50_million_tokens_are_produced_in_bounded_memory() -> None:
    """Sizing and streaming a 50M-token document (200M characters, counted 4 to a token) holds a few pieces."""

    def count_stream(pieces) -> int:
        return sum(len(p) for p in pieces) // 4

    tracemalloc.start()
    try:
        doc = passkey_document(
            50_000_000, seed=7, depth=0.5, count_tokens=lambda s: len(s) // 4, count_stream=count_stream
        )
        chars = keys = 0
        tail = ""
        for piece in doc.pieces(1 << 15):
            chars += len(piece)
            keys += (tail + piece).count(doc.answer)  # (a key straddling two pieces is seen whole)
            tail = piece[-(len(doc.answer) - 1) :]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(doc.tokens - 50_000_000) <= 50_000 and chars == doc.chars > 190_000_000
    assert keys == 2  # the key line holds the key twice, and nothing else holds it
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


def test_cli_demo_streams_the_same_document(tiny_model_dir, counters, capsys) -> None:
    rc = main(
        ["demo", "--tokens", "3000", "--seed", "5", "--json", "--model", str(tiny_model_dir), "--max-new-tokens", "4"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    depth = (5 * 0.618034) % 1.0
    sample = make_sample("passkey", length=3000, seed=5, depth=depth, count_tokens=counters[0])
    assert result["expected"] == sample.answers[0] and result["depth"] == depth
    assert result["stream_tokens"] == sample.meta["tokens"]
    assert isinstance(result["correct"], bool)


def test_cli_demo_names_the_scorers_window_and_the_reader(tiny_model_dir, capsys) -> None:
    rc = main(["demo", "--tokens", "3000", "--seed", "5", "--model", str(tiny_model_dir)])
    assert rc == 0
    out = capsys.readouterr()
    first = out.err.splitlines()[0] if out.err else ""
    import torch

    from xl3m_stream import models

    window = models.load(str(tiny_model_dir), torch.device("cpu")).window
    assert f"{3000 / window:.1f}x the {window:,}-token window of the scorer" in out.err, first
    assert "read by" in out.err and ("CORRECT" in out.out or "WRONG" in out.out)
