"""The evaluation runner end to end on the tiny model: what it records per sample and method."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_config

from xl3m_stream.evaluate.runner import EvalConfig, run_eval

pytestmark = pytest.mark.anyio


async def test_xl3m_results_carry_each_signals_evidence_rank(tiny_model_dir: Path) -> None:
    cfg = EvalConfig(
        tasks=["passkey"],
        lengths=[600],
        samples=2,
        methods=["xl3m", "bm25"],
        engine=tiny_config(tiny_model_dir, question=None, store_segments=64),
    )
    report = await run_eval(cfg)
    xl3m = [s for s in report.samples if s.method == "xl3m"]
    bm25 = [s for s in report.samples if s.method == "bm25"]
    assert len(xl3m) == len(bm25) == 2
    for s in xl3m:
        assert s.signal_ranks is not None
        assert set(s.signal_ranks) == {"certainty", "lexical", "arrival"}  # dense is off in these tests
        # the certainty rank is the measure's, the one the evidence_rank column reports
        assert s.signal_ranks["certainty"] == s.evidence_rank
        assert all(r is None or r >= 1 for r in s.signal_ranks.values())
    assert all(s.signal_ranks is None for s in bm25)  # baselines have one ranking: evidence_rank
    # the passkey sentence shares the question's words, so BM25 finds it first, running or not
    assert [s.signal_ranks["lexical"] for s in xl3m if s.signal_ranks] == [s.evidence_rank for s in bm25] == [1, 1]
    # "x window" counts the scorer's window; the reader's is reported beside it
    assert report.window == 1024 and report.reader_window > 0
    rows = {(r.method, r.samples) for r in report.results}
    assert rows == {("xl3m", 2), ("bm25", 2)}
