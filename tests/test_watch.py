"""Standing questions in the engine (asyncio and trio) and the `xl3m-stream watch` command."""

from __future__ import annotations

import io
import json
import sys

import msgspec
import pytest
from helpers import FAST_RELEVANCE

from xl3m_stream import Alert, Engine, EngineConfig, InputError, SyncEngine
from xl3m_stream.cli import main
from xl3m_stream.monitor import FUSED_THRESHOLDS
from xl3m_stream.sources import TextChunk, parse_log_line

pytestmark = pytest.mark.anyio

DISK_Q = "Which service reported the disk failure?"
KEY_Q = "What is the pass key?"
INCIDENT_LINE = 30


def log_lines(n: int = 48, incident_at: int = INCIDENT_LINE) -> list[str]:
    lines = []
    for i in range(1, n + 1):
        if i == incident_at:
            lines.append(f"2024-05-01T12:00:{i:02d}Z ERROR storage disk failure on /dev/sdb: I/O error\n")
        else:
            lines.append(f"2024-05-01T12:00:{i:02d}Z INFO api req={i:04d} GET /health 200\n")
    return lines


def chunks(lines: list[str]) -> list[TextChunk]:
    return [TextChunk(text=t, meta={"line": i, **parse_log_line(t)}) for i, t in enumerate(lines, 1)]


def config(model_dir, **changes) -> EngineConfig:
    base = dict(
        model=str(model_dir),
        devices=["cpu"],
        segment_tokens=48,
        segment_cut="lines",
        batch_size=4,
        batch_wait_ms=1,
        max_new_tokens=4,
        dtype="float32",  # scores are compared to 1e-4: bf16 (auto on AMX/AVX512-BF16 CPUs) is not that exact
        relevance=FAST_RELEVANCE,
    )
    base.update(changes)
    return EngineConfig(**base)


class PlantedScores:
    """Stands in for ``Scorer.score_many``: a disk-failure segment scores 5 for the disk question.

    Every other score is a small deterministic wobble, so relative thresholds have a spread.
    Records the questions of each call (one call per batch).
    """

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.calls: list[int] = []

    def __call__(self, segments, questions):
        self.calls.append(len(questions))
        out = []
        for q in questions:
            q_text = self.scorer.tokenizer.decode(list(q.ids))
            rows = []
            for i, tokens in enumerate(segments):
                text = self.scorer.tokenizer.decode(list(tokens))
                planted = "disk" in q_text and "disk failure" in text
                value = 5.0 if planted else 0.01 * ((len(tokens) + i) % 5)
                rows.append({"entropy": -1.0, "nll": -1.0, "gain": value, "tgain": value})
            out.append(rows)
        return out


def drain(stream) -> list:
    out = []
    while stream._buffer:
        out.append(stream._buffer.popleft())
    return out


async def test_planted_incident_alerts_once_with_its_lines(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        fake = PlantedScores(engine.replicas[0].scorer)
        engine.replicas[0].scorer.score_many = fake
        events = engine.events()
        disk = engine.watch(DISK_Q, threshold="z3", warmup=5, measure="tgain")
        key = engine.watch(KEY_Q, threshold="z3", warmup=5, measure="tgain")
        await engine.process(chunks(log_lines()))
        alerts = [e for e in drain(events) if isinstance(e, Alert)]
        assert len(alerts) == 1
        alert = alerts[0]
        assert alert.question_index == disk and alert.question == DISK_Q
        assert "disk failure" in alert.text and alert.score == 5.0 and alert.measure == "tgain"
        assert alert.threshold < 5.0 and alert.scores["tgain"] == 5.0
        assert alert.overlap is not None and alert.overlap >= 0.2  # shares "disk failure" with the question
        assert alert.meta["line_start"] <= INCIDENT_LINE <= alert.meta["line_end"]
        assert alert.meta["ts_start"] <= f"2024-05-01T12:00:{INCIDENT_LINE:02d}Z" <= alert.meta["ts_end"]
        # one scoring call per batch covers the rolling question and both watched questions
        stats = engine.stats()
        assert len(fake.calls) == stats.batches and set(fake.calls) == {3}
        watches = {w.id: w for w in engine.watches()}
        assert watches[disk].alerts == 1 and watches[key].alerts == 0
        assert watches[disk].seen == watches[key].seen == stats.segments_scored
        assert engine.metrics().alerts == 1
        # unwatching stops the alerts; the same incident fed again alerts for nobody
        engine.unwatch(disk)
        assert [w.id for w in engine.watches()] == [key]
        await engine.process(chunks(log_lines()))
        assert not [e for e in drain(events) if isinstance(e, Alert)]
        assert len(fake.calls) == engine.stats().batches and fake.calls[-1] == 2


async def test_watch_shares_the_explicit_question(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir, question=DISK_Q)) as engine:
        fake = PlantedScores(engine.replicas[0].scorer)
        engine.replicas[0].scorer.score_many = fake
        engine.watch(DISK_Q, threshold="z3", warmup=5, measure="tgain")
        await engine.process(chunks(log_lines()))
        assert set(fake.calls) == {1}  # the watched question is the engine's question: scored once


async def test_alert_scores_are_the_scorers(tiny_model_dir, anyio_backend) -> None:
    """Real (tiny) model: every segment alerts; each alert carries its own question's scores."""
    async with Engine(config(tiny_model_dir)) as engine:
        events = engine.events()
        ids = {engine.watch(q, threshold=-1e30, warmup=0, cooldown=0, min_overlap=None): q for q in (DISK_Q, KEY_Q)}
        await engine.process(chunks(log_lines(24)))
        alerts = [e for e in drain(events) if isinstance(e, Alert)]
        segments = engine.stats().segments_scored
        assert len(alerts) == 2 * segments
        scorer = engine.replicas[0].scorer
        for alert in alerts:
            assert ids[alert.question_index] == alert.question
            tokens = engine.tokenizer.encode(alert.text, add_special_tokens=False)
            want = scorer.score([tokens], scorer.prepare(scorer.encode_question(alert.question)))[0]
            for name, value in want.items():
                assert alert.scores[name] == pytest.approx(value, abs=1e-4)
            assert alert.score == alert.scores["nll"] and alert.measure == "nll"


async def test_explain_adds_the_readers_answer(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        engine.replicas[0].scorer.score_many = PlantedScores(engine.replicas[0].scorer)
        events = engine.events()
        engine.watch(DISK_Q, threshold="z3", warmup=5, measure="tgain", explain=True)
        await engine.process(chunks(log_lines()))
        await engine.explained()
        alerts = [e for e in drain(events) if isinstance(e, Alert)]
        assert len(alerts) == 1 and isinstance(alerts[0].explanation, str)


async def test_watch_rejects_bad_input(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        for kwargs in (dict(question=""), dict(question="q?", threshold="p100"), dict(question="q?", measure="x")):
            with pytest.raises(InputError):
                engine.watch(**kwargs)
        with pytest.raises(InputError):
            engine.unwatch(99)
        assert engine.watches() == []


def test_sync_engine_watch(tiny_model_dir) -> None:
    with SyncEngine(config(tiny_model_dir)) as engine:
        wid = engine.watch(DISK_Q, threshold=-1e30, warmup=0, min_overlap=None)
        engine.process(chunks(log_lines(12)))
        (stats,) = engine.watches()
        assert stats.id == wid and stats.seen == engine.stats().segments_scored > 0
        assert engine.metrics().alerts == stats.alerts >= 1
        engine.unwatch(wid)
        assert engine.watches() == []


# ---------------------------------------------------------------- the command line
def _watch(tiny_model_dir, *args: str) -> list[str]:
    return ["watch", *args, "--model", str(tiny_model_dir), "--segment-tokens", "48", "--dtype", "float32"]


def test_cli_watch_prints_json_alerts(tiny_model_dir, tmp_path, capsys) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(log_lines(20)))
    argv = _watch(tiny_model_dir, str(log), "--no-follow", "--jsonl", "-q", DISK_Q, "-q", KEY_Q)
    rc = main([*argv, "--threshold=-1e30", "--warmup", "0", "--cooldown", "0", "--no-lexical"])
    out, err = capsys.readouterr()
    assert rc == 0
    alerts = [msgspec.json.decode(line, type=Alert) for line in out.splitlines()]
    assert alerts and {a.question for a in alerts} == {DISK_Q, KEY_Q}
    # the segments tile the log's lines, once per question
    for q in (DISK_Q, KEY_Q):
        mine = sorted((a.meta["line_start"], a.meta["line_end"]) for a in alerts if a.question == q)
        assert mine[0][0] == 1 and mine[-1][1] == 20
        assert all(b[0] in (a[1], a[1] + 1) for a, b in zip(mine, mine[1:]))
        assert all(a.meta["service"] in ("api", "storage") or isinstance(a.meta["service"], list) for a in alerts)
    assert f"{len(alerts)} alert(s)" in err


def test_cli_watch_human_output_and_jsonl_input(tiny_model_dir, monkeypatch, capsys) -> None:
    records = [
        {"ts": f"2024-05-01T12:00:{i:02d}Z", "level": "info", "service": "api", "message": f"GET /health {i}"}
        for i in range(12)
    ]
    records[6] = {"ts": "2024-05-01T12:00:06Z", "level": "error", "service": "storage", "message": "disk failure"}
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    argv = _watch(tiny_model_dir, "-", "--format", "jsonl", "-q", DISK_Q)
    assert main([*argv, "--threshold=-1e30", "--warmup", "0", "--cooldown", "0", "--no-lexical"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ALERT [1] {DISK_Q}")
    assert "lines 1-" in out and "2024-05-01T12:00:00Z .." in out
    assert "  | 2024-05-01T12:00:06Z ERROR storage disk failure" in out


def test_cli_watch_loads_a_reader_only_to_explain(tiny_model_dir, tmp_path, capsys) -> None:
    """Alerts need no reader: a reader that cannot load stops only a watch with --explain."""
    log = tmp_path / "app.log"
    log.write_text("".join(log_lines(8)))
    argv = _watch(tiny_model_dir, str(log), "--no-follow", "--jsonl", "-q", DISK_Q)
    argv += ["--reader-model", str(tmp_path / "no-such-reader"), "--threshold=-1e30", "--warmup", "0", "--no-lexical"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip()  # alerts printed without any reader
    assert main([*argv, "--explain"]) == 1
    assert "no-such-reader" in capsys.readouterr().err


def test_cli_watch_follows_until_idle(tiny_model_dir, tmp_path, capsys) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(log_lines(6)))
    argv = _watch(tiny_model_dir, str(log), "--jsonl", "-q", DISK_Q, "--idle-timeout", "1", "--flush-after", "0.2")
    assert main([*argv, "--threshold=-1e30", "--warmup", "0", "--no-lexical"]) == 0
    out = capsys.readouterr().out
    alerts = [json.loads(line) for line in out.splitlines()]
    assert alerts and alerts[0]["meta"]["line_start"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "p100"], "a percentile must be between 0 and 100"),
        (["--warmup", "-3"], "warmup must be an integer >= 0"),
        (["-q", " "], "--question must not be empty"),
    ],
)
def test_cli_watch_errors_are_one_line(tiny_model_dir, tmp_path, capsys, args, message) -> None:
    log = tmp_path / "app.log"
    log.write_text("x\n")
    assert main(_watch(tiny_model_dir, str(log), "--no-follow", "-q", DISK_Q, *args)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xl3m-stream: error: ") and message in err[0]


def test_cli_watch_missing_file(tmp_path, capsys) -> None:
    assert main(["watch", str(tmp_path / "nope.log"), "--no-follow", "-q", DISK_Q]) == 1
    assert "input file not found" in capsys.readouterr().err


async def test_events_are_json_lines(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        engine.replicas[0].scorer.score_many = PlantedScores(engine.replicas[0].scorer)
        events = engine.events()
        engine.watch(DISK_Q, threshold="z3", warmup=5, measure="tgain")
        await engine.process(chunks(log_lines()))
        (alert,) = [e for e in drain(events) if isinstance(e, Alert)]
        line = json.loads(msgspec.json.encode(alert))
        assert line["type"] == "alert" and line["question"] == DISK_Q
        assert line["meta"]["level"] in ("ERROR", ["INFO", "ERROR"])


async def test_watches_are_kept_with_the_state(tiny_model_dir, tmp_path, anyio_backend) -> None:
    """A state dir keeps the standing questions: a restart watches them again under their ids
    (statistics start afresh), a removed one stays removed, new ids never reuse old ones."""
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:
        kept = engine.watch("Which disk failed?", threshold="z3", cooldown=5)
        gone = engine.watch("Who logged in?")
        engine.unwatch(gone)
        await engine.process(chunks(log_lines(16)))
    assert (state / "watches.json").exists()
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:
        stats = engine.watches()
        assert [(w.id, w.question, w.threshold) for w in stats] == [(kept, "Which disk failed?", "z3")]
        assert stats[0].seen == 0  # running statistics are not saved
        fresh = engine.watch("Is the network down?")
        assert fresh > gone
        events = engine.events()
        await engine.process(chunks(log_lines(48)))
        await engine.explained()
        events.close()
        watched = {w.id: w.seen for w in engine.watches()}
        assert watched[kept] > 0 and watched[fresh] > 0  # the restored watch scores again
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:
        assert sorted(w.id for w in engine.watches()) == sorted([kept, fresh])


async def test_auto_threshold_follows_measure_gate_and_embedder(tiny_model_dir, anyio_backend, monkeypatch) -> None:
    """A watch given no threshold gets the one measured for its measure, its lexical gate and
    the engine's embedder (a fused watch's threshold is measured per embedder; both came out
    z5.625, so the table is set apart here to see the embedder reach it)."""
    monkeypatch.setitem(FUSED_THRESHOLDS, "mpnet", "z4.5")
    for embedder, fused in (("minilm", "z5.625"), ("mpnet", "z4.5")):
        async with Engine(config(tiny_model_dir, embedder=embedder)) as engine:
            ids = [
                engine.watch("Which disk failed?"),
                engine.watch("Which disk failed?", min_overlap=None),
                engine.watch("Is a drive failing?", measure="fused"),
                engine.watch("Is a drive failing?", measure="fused", threshold="z3"),
            ]
            thresholds = {w.id: w.threshold for w in engine.watches()}
            assert [thresholds[i] for i in ids] == ["z2", "z4", fused, "z3"]


async def test_damaged_saved_watches_refuse_with_one_line(tiny_model_dir, tmp_path, anyio_backend) -> None:
    from xl3m_stream.errors import StateError

    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:
        engine.watch("Which disk failed?")
    (state / "watches.json").write_text('{"next_id": 2, "watches": [{"id": "x"}]}')
    with pytest.raises(StateError, match=r"watches\.json: the saved watches cannot be read.*remove the file"):
        async with Engine(config(tiny_model_dir, state_dir=str(state))):
            pass
    (state / "watches.json").unlink()
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:  # the stream itself is intact
        assert engine.watches() == [] and engine.recovery is not None
