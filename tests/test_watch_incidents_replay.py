"""The monitoring benchmark's replay picks a fused watch's ``auto`` threshold for the embedder
whose dense scores it replays (the dump's, or ``--embedder``), as the engine would.

The two embedders' measured thresholds are equal today (z5.625), so each test sets them apart
in the library's own table (``FUSED_THRESHOLDS``) to see which one a replay reaches."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from xl3m_stream.events import Alert
from xl3m_stream.monitor import FUSED_THRESHOLDS, Monitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import watch_incidents

QUESTION = "Which service ran out of disk space?"


def _row(seq: int, nll: float, bm25: float, dense: float) -> Alert:
    return Alert(
        question=QUESTION,
        question_index=1,
        time=0.0,
        seq=seq,
        start=seq * 10,
        end=seq * 10 + 10,
        score=0.0,
        threshold=0.0,
        text=f"line {seq}",
        scores={"nll": nll, "bm25": bm25, "dense": dense},
    )


def _dump_with_a_spike_between_the_thresholds() -> list[Alert]:
    """200 routine segments, then one whose fused score lies halfway between the MiniLM and
    the mpnet fused thresholds (which differ), found by bisection on the spike's size."""
    rng = random.Random(7)
    rows = [_row(i, rng.gauss(-5, 0.3), abs(rng.gauss(1, 0.5)), rng.gauss(0.3, 0.05)) for i in range(200)]

    def limits_and_score(size: float) -> tuple[float, float, float]:
        values = []
        for embedder in ("minilm", "mpnet"):
            monitor = Monitor(embedder)
            watch = monitor.add(QUESTION, measure="fused")
            for r in rows:
                monitor.observe(watch.id, r.seq, r.scores, r.text)
            limit = monitor.threshold_value(watch.id)
            assert limit is not None
            values.append(limit)
            score = monitor.observe(watch.id, 200, _spike(size).scores, "spike").score
        return values[0], values[1], score

    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        minilm, mpnet, score = limits_and_score(mid)
        target = (minilm + mpnet) / 2
        lo, hi = (mid, hi) if score < target else (lo, mid)
    minilm, mpnet, score = limits_and_score(lo)
    assert mpnet < score < minilm
    return [*rows, _spike(lo)]


def _spike(size: float) -> Alert:
    return _row(200, -5 + 0.3 * size, 1 + 0.5 * size, 0.3 + 0.05 * size)


@pytest.fixture(autouse=True)
def _thresholds_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FUSED_THRESHOLDS, "minilm", "z5.625")
    monkeypatch.setitem(FUSED_THRESHOLDS, "mpnet", "z4.5")


@pytest.mark.parametrize(("embedder", "alerts"), [("mpnet", 1), ("minilm", 0)])
def test_replay_uses_the_embedders_auto_threshold(embedder: str, alerts: int) -> None:
    dump = _dump_with_a_spike_between_the_thresholds()
    out = watch_incidents.replay(
        dump, threshold="auto", measure="fused", warmup=None, cooldown=1, min_overlap="auto", embedder=embedder
    )
    assert [a.seq for a in out] == [200] * alerts


def test_replay_of_a_dump_takes_its_recorded_embedder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import msgspec

    truth = watch_incidents.Truth(seed=0, tokens=2010, lines=201, questions=[QUESTION], incidents=[])
    path = tmp_path / "dump.jsonl"
    head = {"truth": truth, "model": "default", "segment_tokens": 256, "embedder": "mpnet"}
    path.write_bytes(
        b"".join(msgspec.json.encode(x) + b"\n" for x in [head, *_dump_with_a_spike_between_the_thresholds()])
    )
    assert watch_incidents.main(["--replay", str(path), "--measure", "fused"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["embedder"] == "mpnet" and summary["alerts"] == 1 and summary["threshold"] == "auto"


def test_real_log_replay_takes_the_dumps_embedder_and_refuses_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import msgspec
    import watch_real_log

    rows = [
        msgspec.structs.replace(r, meta={"line_start": r.seq + 1, "line_end": r.seq + 1})
        for r in _dump_with_a_spike_between_the_thresholds()
    ]
    path = tmp_path / "dump.jsonl"
    head = {"error_line": 201, "question": QUESTION, "embedder": "mpnet"}
    path.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in [head, *rows]))
    assert watch_real_log.main(["--replay", str(path)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["threshold"] == "auto" and figures["alerts"] == 1 and figures["hit"] and not figures["false_alerts"]
    assert watch_real_log.main(["--replay", str(path), "--embedder", "minilm"]) == 2
    assert "ran with 'mpnet'" in capsys.readouterr().err
