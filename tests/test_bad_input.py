"""Bad input at the command line: a clear one-line error or a counted skip, never a traceback,
and nothing else lost.

Every case runs ``xl3m_stream.cli.main`` in this process on the tiny model. An error must be
exactly one line ``xl3m-stream: error: ...`` on stderr with a non-zero exit status; a skip is
exit status 0 with a ``xl3m-stream: note: ...`` line that counts what was skipped. Where a
state directory is involved, the valid data around the bad data (and whatever the state held
before) must still be there afterwards.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from xl3m_stream.cli import main
from xl3m_stream.persistence import read_stream

GOOD = "".join(f"line {i}: The grass is green. The sky is blue.\n" for i in range(8)) + "The pass key is 12345.\n"
TRIED: list[str] = []  # the bad inputs this module tries (figures for docs/RELIABILITY.md)


@pytest.fixture
def run(tiny_model_dir, capsys):
    """Run the CLI; return (exit status, stdout, stderr lines) after checking there is no traceback."""

    def call(*argv: str, model: bool = True, tried: str | None = None) -> tuple[int, str, list[str]]:
        if tried:
            TRIED.append(tried)
        args = list(argv)
        if model:
            args += ["--model", str(tiny_model_dir), "--max-new-tokens", "4", "--segment-tokens", "32"]
        try:
            code = main(args)
        except SystemExit as exc:  # argparse ends usage errors this way (after its one line)
            code = exc.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out
        lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
        return code, out, lines

    return call


def one_error(code: int, lines: list[str], *expected: str) -> str:
    assert code != 0, lines
    errors = [line for line in lines if line.startswith("xl3m-stream: error: ")]
    assert len(errors) == 1 and len(lines) == 1, lines
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def notes(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("xl3m-stream: note: ")]


def stream_text(tokenizer_dir: Path, state: Path) -> str:
    from transformers import AutoTokenizer

    got = read_stream(state)
    return AutoTokenizer.from_pretrained(tokenizer_dir).decode(got.ids) + got.pending_text


@pytest.fixture
def good_state(run, tmp_path: Path) -> Path:
    """A state directory that already holds GOOD (whatever comes next must not lose it)."""
    src = tmp_path / "good.txt"
    src.write_text(GOOD)
    state = tmp_path / "state"
    code, _, lines = run("ingest", str(src), "--state-dir", str(state))
    assert code == 0 and not notes(lines)
    return state


def test_invalid_utf8_binary_and_nul_bytes_are_replaced_counted_and_the_rest_kept(
    run, good_state: Path, tmp_path: Path, tiny_model_dir
) -> None:
    rng = random.Random(5)
    binary = bytes(rng.randrange(256) for _ in range(1200))
    data = b"before the junk\n" + b"\xff\xfe\xc3(\xed\xa0\x80" + b"\0\0" + binary + b"\0 after the junk: key 777\n"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data)
    code, out, lines = run("ingest", str(bad), "--state-dir", str(good_state), tried="invalid UTF-8, binary, NUL bytes")
    assert code == 0 and "ingested" in out
    (note,) = notes(lines)
    replaced = data.decode("utf-8", "replace").count("\ufffd")
    nuls = data.decode("utf-8", "replace").count("\0")
    assert f"{replaced} invalid sequence(s) replaced, {nuls} NUL byte(s) removed" in note
    text = stream_text(tiny_model_dir, good_state)
    assert text.startswith(GOOD)  # what the state held before
    assert "before the junk\n" in text and "after the junk: key 777\n" in text
    assert "\0" not in text and "\ufffd" in text


def test_a_10_mb_line_without_newline_in_json_lines_is_skipped_and_counted(
    run, good_state: Path, tmp_path: Path, tiny_model_dir
) -> None:
    src = tmp_path / "huge.jsonl"
    with src.open("w") as f:
        f.write('{"level": "info", "message": "first record"}\n')
        f.write('{"message": "' + "x" * (10 * (1 << 20)) + '"')  # 10 MB, no newline anywhere
        f.write("\n")
        f.write('{"level": "error", "message": "last record"}\n')
        f.write("y" * (10 * (1 << 20)))  # and a 10 MB tail with no newline at all
    code, _, lines = run("ingest", str(src), "--jsonl", "--state-dir", str(good_state), tried="10 MB lines (JSON)")
    assert code == 0
    assert any("skipped 2 JSON-lines record(s)" in n for n in notes(lines))
    text = stream_text(tiny_model_dir, good_state)
    assert text.startswith(GOOD) and "INFO first record\n" in text and "ERROR last record\n" in text
    assert "xxxxxxxx" not in text


def test_a_10_mb_text_line_streams_in_bounded_pieces(run, tmp_path: Path, monkeypatch) -> None:
    """Plain text: a 10 MB line is data, read in pieces; scoring is stubbed (a real model would take minutes)."""
    from xl3m_stream import scoring

    def instant(self, token_lists, questions):
        return [[{"entropy": 1.0, "nll": 1.0, "gain": 0.0, "tgain": 0.0} for _ in token_lists] for _ in questions]

    monkeypatch.setattr(scoring.Scorer, "score_many", instant)
    src = tmp_path / "line.txt"
    src.write_text("The pass key is 12345. " + "grass " * (10 * (1 << 20) // 6))  # no newline
    code, out, lines = run("ask", str(src), "-q", "What is the pass key?", "--json", tried="10 MB line (text)")
    assert code == 0 and not lines
    assert json.loads(out)["stream_tokens"] > 1_000_000


@pytest.mark.parametrize("stdin", [False, True])
def test_empty_input(run, good_state: Path, tmp_path: Path, monkeypatch, stdin: bool, tiny_model_dir) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    source = str(empty)
    if stdin:
        import io
        import sys

        source = "-"
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\0\0")))  # only NULs: empty too
    code, _, lines = run("ask", source, "-q", "What is the pass key?", tried="empty input (ask)")
    one_error(code, lines, "the input is empty", *(["2 NUL byte(s) removed"] if stdin else []))
    if stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, out, lines = run("ingest", source, "--state-dir", str(good_state), tried="empty input (ingest)")
    assert code == 0 and "ingested 0 tokens" in out
    assert [n for n in notes(lines) if "the input was empty" in n]
    assert stream_text(tiny_model_dir, good_state) == GOOD


def test_a_question_longer_than_the_window(run, good_state: Path, tmp_path: Path) -> None:
    before = read_stream(good_state)
    long_question = "Why is the grass green? " * 300  # > 1024 tokens, the tiny model's window
    code, _, lines = run("ask", "--state-dir", str(good_state), "-q", long_question, tried="question > window")
    one_error(code, lines, "limit is max_question_tokens=256")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"max_question_tokens": 32768}))
    code, _, lines = run(
        "ask", "--state-dir", str(good_state), "-q", long_question, "--config", str(cfg), tried="question > window"
    )
    one_error(code, lines, "exceeds the scoring model's window of 1024 tokens")
    assert read_stream(good_state).ids == before.ids


def test_malformed_json_lines_are_skipped_counted_and_logged(
    run, good_state: Path, tmp_path: Path, tiny_model_dir, caplog
) -> None:
    src = tmp_path / "log.jsonl"
    src.write_text(
        '{"ts": "12:00", "level": "info", "service": "api", "message": "request ok"}\n'
        '{"message": "unterminated\n'
        "[1, 2, 3]\n"
        '{"level": "warn"}\n'
        "\x00\x01 not json at all\n"
        '{"ts": "12:01", "level": "error", "service": "disk", "message": "disk failure"}\n'
    )
    code, _, lines = run("ingest", str(src), "--jsonl", "--state-dir", str(good_state), tried="malformed JSON lines")
    assert code == 0
    assert any("skipped 4 JSON-lines record(s)" in n for n in notes(lines)), lines
    assert any("skipped JSON record" in r.getMessage() for r in caplog.records)  # logged, with its line number
    text = stream_text(tiny_model_dir, good_state)
    assert text.startswith(GOOD) and "12:00 INFO api request ok\n" in text and "12:01 ERROR disk disk failure\n" in text
    segments = read_stream(good_state).segments
    services = [s.meta.get("service") for s in segments if s.meta]
    assert any(v == "disk" or (isinstance(v, list) and "disk" in v) for v in services)  # metadata survived the log


def test_hostile_json_lines_are_skipped_and_ingest_and_watch_go_on(
    run, good_state: Path, tmp_path: Path, tiny_model_dir
) -> None:
    """A record nested 1,000 deep (2 KB), one 100,000 deep and a number too big for any type:
    each skipped and counted; the records around them are kept and a watch keeps watching."""
    src = tmp_path / "hostile.jsonl"
    src.write_text(
        '{"level": "info", "message": "before the bomb"}\n'
        + "[" * 1000
        + "]" * 1000
        + "\n"
        + '{"message": "deep", "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}\n"
        + '{"message": "huge", "n": '
        + "9" * 5000
        + "}\n"
        + '{"level": "error", "message": "after the bomb"}\n'
    )
    code, _, lines = run("ingest", str(src), "--jsonl", "--state-dir", str(good_state), tried="JSON nested 1000 deep")
    assert code == 0, lines
    assert any("skipped 3 JSON-lines record(s)" in n for n in notes(lines)), lines
    text = stream_text(tiny_model_dir, good_state)
    assert text.startswith(GOOD) and "INFO before the bomb\n" in text and "ERROR after the bomb\n" in text
    code, out, lines = run(
        "watch", str(src), "--format", "jsonl", "--no-follow", "-q", "What failed?", "--jsonl",
        "--threshold=-1e30", "--warmup", "0", "--no-lexical", tried="JSON nested 1000 deep (watch)",
    )  # fmt: skip
    assert code == 0, lines
    assert any("skipped 3 JSON-lines record(s)" in n for n in notes(lines)), lines
    assert "after the bomb" in out


def test_missing_file_directory_and_unknown_model(run, good_state: Path, tmp_path: Path) -> None:
    before = read_stream(good_state)
    fresh = tmp_path / "fresh-state"
    code, _, lines = run("ingest", str(tmp_path / "nope.txt"), "--state-dir", str(fresh), tried="missing file")
    one_error(code, lines, "input file not found")
    code, _, lines = run("ask", str(tmp_path / "nope.txt"), "-q", "What?", tried="missing file")
    one_error(code, lines, "input file not found")
    code, _, lines = run("ingest", str(tmp_path), "--state-dir", str(fresh), tried="directory as input")
    one_error(code, lines, "directory")
    src = tmp_path / "in.txt"
    src.write_text(GOOD)
    for model in ("no-such-model-anywhere", str(tmp_path / "missing-model-dir"), str(src)):
        code, _, lines = run(
            "ingest", str(src), "--state-dir", str(fresh), "--model", model, model=False, tried="unknown model"
        )
        one_error(code, lines, "model")
        code, _, lines = run("ask", "--state-dir", str(good_state), "-q", "What?", "--model", model, model=False)
        one_error(code, lines, "model")
    assert not fresh.exists()  # a refused command creates no state
    assert read_stream(good_state).ids == before.ids


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--segment-tokens", "0"], "`int` >= 8 - at `$.segment_tokens`"),
        (["--segment-tokens", "100000"], "`int` <= 32768 - at `$.segment_tokens`"),
        (["--batch-size", "-3"], "`$.batch_size`"),
        (["--context-tokens", "0"], "`$.context_tokens`"),
        (["--max-new-tokens", "999999"], "`$.max_new_tokens`"),
        (["--segment-tokens", "abc"], "invalid int value"),
        (["--segment-overlap", "-1"], "`$.segment_overlap`"),
        (["--segment-tokens", "32", "--segment-overlap", "32"], "segment_overlap (32) must be smaller"),
        (["--fsync", "sometimes"], "invalid choice"),
        (["--dtype", "float8"], "invalid choice"),
        (["--device", "tpu:0"], "is not a device"),
    ],
)
def test_out_of_range_config_values(run, tmp_path: Path, argv: list[str], expected: str) -> None:
    src = tmp_path / "in.txt"
    src.write_text(GOOD)
    state = tmp_path / "state"
    code, _, lines = run("ingest", str(src), "--state-dir", str(state), *argv, model=False, tried="config: " + argv[0])
    one_error(code, lines, expected)
    assert not state.exists()


def test_bad_config_file_and_environment(run, tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "in.txt"
    src.write_text(GOOD)
    cases = {
        "fsync.json": ('{"fsync": "sometimes"}', "Invalid enum value 'sometimes' - at `$.fsync`"),
        "interval.toml": ("fsync_interval_s = 0", "`$.fsync_interval_s`"),
        "unknown.json": ('{"segmnet_tokens": 64}', "segmnet_tokens"),
        "broken.toml": ("segment_tokens = ", "is not valid"),
        "list.json": ("[1, 2]", "must hold a table/object"),
    }
    for name, (content, expected) in cases.items():
        cfg = tmp_path / name
        cfg.write_text(content)
        code, _, lines = run("ask", str(src), "-q", "What?", "--config", str(cfg), model=False, tried="config file")
        one_error(code, lines, expected)
    monkeypatch.setenv("XL3M_STREAM_SNAPSHOT_EVERY_S", "-1")
    code, _, lines = run("ask", str(src), "-q", "What?", model=False, tried="config environment variable")
    one_error(code, lines, "`$.snapshot_every_s`")


def test_hostile_values_in_flags_files_and_environment(run, tmp_path: Path, monkeypatch) -> None:
    """NaN durations, settings nested 100,000 deep, numbers of 5,000 digits or past 64 bits: one line each."""
    src = tmp_path / "in.txt"
    src.write_text(GOOD)
    for flag in ("--flush-after", "--idle-timeout"):
        for value in ("nan", "inf", "-1"):
            code, _, lines = run("watch", str(src), "-q", "What?", f"{flag}={value}", tried=f"watch {flag} {value}")
            one_error(code, lines, flag, "finite number of seconds")
    cases = {
        "deep.json": ('{"stop": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
        "deep.toml": ("stop = " + "[" * 100_000 + "]" * 100_000, "nests too deeply"),
        "digits.json": ('{"seed": ' + "9" * 5000 + "}", "is not valid"),
        "window.json": ('{"local_window_tokens": 10000000000000000000}', "local_window_tokens"),
    }
    for name, (content, expected) in cases.items():
        cfg = tmp_path / name
        cfg.write_text(content)
        code, _, lines = run("ask", str(src), "-q", "What?", "--config", str(cfg), model=False, tried="config: " + name)
        one_error(code, lines, expected)
    monkeypatch.setenv("XL3M_STREAM_SEED", "9" * 5000)
    code, _, lines = run("ask", str(src), "-q", "What?", model=False, tried="environment: 5,000 digits")
    one_error(code, lines, "XL3M_STREAM_SEED")
    monkeypatch.setenv("XL3M_STREAM_SEED", str(2**64))
    code, _, lines = run("ask", str(src), "-q", "What?", model=False, tried="environment: past 64 bits")
    one_error(code, lines, "seed", "64-bit")


def test_unusable_state_directories(run, good_state: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(GOOD)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, _, lines = run("ingest", str(src), "--state-dir", str(a_file), tried="state dir is a file")
    one_error(code, lines, "not a directory")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    code, _, lines = run("ingest", str(src), "--state-dir", str(home), tried="state dir not a state")
    one_error(code, lines, "holds no xl3m-stream state")
    code, _, lines = run("ask", "--state-dir", str(tmp_path / "nothing"), "-q", "What?", tried="no state")
    one_error(code, lines, "no xl3m-stream state")
    code, _, lines = run("ask", "-q", "What?", tried="neither PATH nor --state-dir")
    one_error(code, lines, "give PATH")
    code, _, lines = run("ask", str(src), "-q", "What?", "--rescan", tried="--rescan without a state")
    one_error(code, lines, "--rescan needs --state-dir")
    code, out, lines = run("ask", "--state-dir", str(good_state), "-q", "What is the pass key?", "--rescan", "--json")
    assert code == 0 and json.loads(out)["segments"] and not lines
    code, _, lines = run(
        "ingest", str(src), "--state-dir", str(good_state), "--segment-tokens", "64", model=False, tried="layout"
    )
    one_error(code, lines, "segment_tokens=32")
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_a_damaged_log_under_the_snapshot_refuses_rescan_in_one_line(run, good_state: Path) -> None:
    log = good_state / "segments.log"
    data = bytearray(log.read_bytes())
    data[40] ^= 0x01  # in the first record, long covered by the snapshot
    log.write_bytes(bytes(data))
    question = "What is the pass key?"
    argv = ["ask", "--state-dir", str(good_state), "-q", question]
    code, _, lines = run(*argv, "--rescan", tried="damaged log + rescan")
    one_error(code, lines, "the log is damaged at byte", "left as it was")
    code, out, lines = run(*argv, "--json")
    assert code == 0 and json.loads(out)["segments"] and not lines  # the store still answers


@pytest.mark.parametrize("planted", ["fifo meta.json", "fifo snapshot", "hard link lock"])
def test_special_files_planted_in_a_state_dir(run, good_state: Path, tmp_path: Path, planted: str) -> None:
    """Refused in one line (or, for a snapshot, skipped with a note), never hung on or written through."""
    import os

    src = tmp_path / "more.txt"
    src.write_text("more text\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if planted == "fifo meta.json":
        (good_state / "meta.json").unlink()
        os.mkfifo(good_state / "meta.json")
    elif planted == "fifo snapshot":
        os.mkfifo(good_state / "snapshot-9999999999999999.bin")
    else:
        (good_state / "lock").unlink()
        os.link(victim, good_state / "lock")
    code, out, lines = run("ingest", str(src), "--state-dir", str(good_state), tried="planted " + planted)
    if planted == "fifo snapshot":
        assert code == 0 and "ingested" in out
        assert any("snapshot not used" in n and "a FIFO" in n for n in notes(lines)), lines
    else:
        one_error(code, lines, "hard links" if "link" in planted else "not a regular file (a FIFO)")
    assert victim.read_text() == "precious"


def test_ingesting_the_same_file_again_takes_only_what_is_new_and_refuses_a_rewritten_one(
    run, good_state: Path, tmp_path: Path, tiny_model_dir
) -> None:
    src = tmp_path / "good.txt"  # what good_state was ingested from
    code, out, lines = run("ingest", str(src), "--state-dir", str(good_state), tried="the same file again")
    assert (
        code == 0
        and "ingested 0 tokens" in out
        and notes(lines) == [f"xl3m-stream: note: nothing new in {src}: the state already holds all of it"]
    )
    src.write_text(GOOD.replace("12345", "99999"))
    code, _, lines = run("ingest", str(src), "--state-dir", str(good_state), tried="a file rewritten since its ingest")
    one_error(code, lines, "changed since it was ingested", "--from-start")
    src.write_text("short\n")
    code, _, lines = run("ingest", str(src), "--state-dir", str(good_state), tried="a file truncated since its ingest")
    one_error(code, lines, "fewer than the", "--from-start")
    assert stream_text(tiny_model_dir, good_state) == GOOD


def test_figures(run) -> None:
    """Not a check: prints how many bad inputs this module tried (for docs/RELIABILITY.md)."""
    print(f"bad inputs tried: {len(TRIED)} runs, {len(set(TRIED))} kinds: {sorted(set(TRIED))}")
