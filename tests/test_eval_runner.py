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
    said: list[str] = []
    report = await run_eval(cfg, progress=said.append)
    xl3m = [s for s in report.samples if s.method == "xl3m"]
    bm25 = [s for s in report.samples if s.method == "bm25"]
    assert len(xl3m) == len(bm25) == 2
    # progress reports every result as it comes, in the report's order, before the run ends
    results = [line for line in said if line.startswith("  ")]
    assert results == [
        f"  {s.method}: selection recall {s.selection_recall:.2f}, evidence rank {s.evidence_rank}, "
        + f"accuracy {s.accuracy:.2f}, {s.seconds:.1f} s"
        for s in report.samples
    ]
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


async def test_selection_only_matches_the_read_run_and_keeps_signals(tiny_model_dir: Path) -> None:
    base = EvalConfig(
        tasks=["passkey"],
        lengths=[600],
        samples=2,
        methods=["xl3m", "bm25"],
        engine=tiny_config(tiny_model_dir, question=None, store_segments=4),
    )
    read = await run_eval(base)
    only = await run_eval(base.__class__(**{**_fields(base), "read": False, "keep_signals": True}))
    key = [(s.method, s.seed, s.selection_recall, s.evidence_rank) for s in read.samples]
    assert [(s.method, s.seed, s.selection_recall, s.evidence_rank) for s in only.samples] == key
    assert all(s.accuracy is None for s in only.samples)
    assert all(r.accuracy is None and r.accuracy_when_selected is None for r in only.results)
    assert all(s.signals is None for s in read.samples)
    for s in only.samples:
        if s.method != "xl3m":
            assert s.signals is None
            continue
        sig = s.signals
        assert sig is not None
        n = len(sig.sizes)
        assert n > 4 and all(size > 0 for size in sig.sizes)
        assert {"nll", "entropy", "bm25", "arrival", "bm25_global"} <= set(sig.values)
        assert all(len(v) == n for v in sig.values.values())
        assert len(sig.store) == 4 and set(sig.store) <= set(range(n))  # the bounded store, full
        # the evidence's segment is where the certainty rank says it is
        (holding,) = sig.evidence
        assert len(holding) == 1
        nll = sig.values["nll"]
        assert 1 + sum(v > nll[holding[0]] for v in nll) == s.evidence_rank
        assert sig.budget > 0


def _fields(cfg: EvalConfig) -> dict[str, object]:
    return {f: getattr(cfg, f) for f in cfg.__struct_fields__}


async def test_the_offline_fusion_benchmark_reproduces_the_engines_selection(
    tiny_model_dir: Path, tmp_path, capsys
) -> None:
    import json
    import sys

    import msgspec

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fusion_offline

    cfg = EvalConfig(
        tasks=["passkey", "needle"],
        lengths=[900],
        samples=3,
        methods=["xl3m"],
        read=False,
        keep_signals=True,
        engine=tiny_config(tiny_model_dir, question=None, store_segments=5, context_tokens=96),
    )
    report = await run_eval(cfg)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(msgspec.to_builtins(report)))
    assert fusion_offline.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "engine rule agrees with the run on 6 of 6 samples" in out, out
    # and the agreement means something: the run both selected and missed evidence
    assert {s.selection_recall for s in report.samples} >= {0.0, 1.0}


async def test_a_run_from_a_later_sample_repeats_those_samples_and_merges(tiny_model_dir: Path) -> None:
    from xl3m_stream.evaluate.report import merge_reports

    base = EvalConfig(
        tasks=["passkey"],
        lengths=[600],
        samples=3,
        methods=["xl3m", "bm25"],
        read=False,
        engine=tiny_config(tiny_model_dir, question=None, store_segments=4),
    )
    whole = await run_eval(base)
    head = await run_eval(EvalConfig(**{**_fields(base), "samples": 1}))
    tail = await run_eval(EvalConfig(**{**_fields(base), "samples": 2, "first_sample": 1}))

    def key(samples: list) -> list[tuple]:
        return [(s.method, s.seed, s.depth, s.tokens, s.selection_recall, s.evidence_rank) for s in samples]

    # samples 1 and 2 of the seed, not two new ones: the same haystacks, depths and selections
    assert key(tail.samples) == key(whole.samples[2:])
    merged = merge_reports([head, tail])
    assert sorted(key(merged.samples)) == sorted(key(whole.samples))
    # the same sample twice is refused, not double-counted
    with pytest.raises(ValueError, match="share samples"):
        merge_reports([whole, tail])


def test_first_sample_must_not_be_negative() -> None:
    from xl3m_stream.errors import InputError

    with pytest.raises(InputError, match="first_sample"):
        EvalConfig(first_sample=-1)
