"""The state directory: log format, recovery, torn and corrupt data, locking, validation, engine restarts.

Format-level tests use ``StateDir`` directly (no model); engine-level tests use the tiny model.
A "crash image" is a copy of the state directory taken while an engine runs: exactly what a
killed process leaves on disk (everything it wrote reached the OS before ``feed`` returned).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

import anyio
import msgspec
import pytest
from helpers import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from xl3m_stream import Engine, EngineConfig, InputError, StateError
from xl3m_stream import persistence as P
from xl3m_stream.persistence import LOG_HEADER, Layout, StateDir, read_stream
from xl3m_stream.sources import TextChunk

LAYOUT = Layout(
    segment_tokens=8,
    segment_overlap=0,
    segment_cut="tokens",
    boundary_ids=None,
    vocab_size=1000,
    tokenizer_sha256="0" * 64,
)

TEXT = "".join(f"line {i}: The grass is green. The sky is blue.\n" for i in range(24))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(model_dir, state_dir, **changes) -> EngineConfig:
    return tiny_config(model_dir, **{"max_new_tokens": 4, "state_dir": str(state_dir), **changes})


def open_dir(path: Path, layout: Layout = LAYOUT, fsync: P.Fsync = "interval") -> StateDir:
    return StateDir.open(path, layout=layout, model="m", model_name="m", fsync=fsync)


def write_records(path: Path, steps: list[tuple[list[int], str]]) -> list[int]:
    """Append (ids, text) steps as a text feed would (all text consumed); return each record's end offset."""
    state = open_dir(path)
    state.recover()
    list(state.replay())
    ends = []
    pos = chars = 0
    for ids, text in steps:
        chars += len(text)
        token_ends = [chars] * len(ids)
        state.append(pos, ids, token_ends, text=text, chars=chars, consumed=chars)
        pos += len(ids)
        ends.append(state.log_size)
    state.close()
    return ends


def replay_all(path: Path) -> tuple[StateDir, list[tuple[list[int], str]]]:
    state = open_dir(path)
    state.recover()
    got = [(ids, rec.text) for rec, ids, _ in state.replay()]
    return state, got


# ------------------------------------------------------------------------------- format (no model)


@given(st.lists(st.integers(0, 65535), max_size=50), st.sampled_from([2, 4]))
def test_ids_round_trip(ids: list[int], width: int) -> None:
    assert P.decode_ids(P.encode_ids(ids, width), width) == ids


steps_strategy = st.lists(
    st.tuples(st.lists(st.integers(0, 999), max_size=12), st.text(max_size=20)).filter(lambda s: s[0] or s[1]),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_strategy, cut=st.floats(0, 1), flip=st.booleans(), seed=st.integers(0, 2**16))
def test_a_damaged_log_replays_a_prefix_and_goes_on(steps, cut: float, flip: bool, seed: int) -> None:
    """Truncated or bit-flipped anywhere: recovery keeps exactly the records before the damage."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "state"
        ends = write_records(folder, steps)
        log = folder / P.LOG_NAME
        data = bytearray(log.read_bytes())
        at = len(LOG_HEADER) + int(cut * (len(data) - len(LOG_HEADER)))
        if flip and at < len(data):
            data[at] ^= 1 << random.Random(seed).randrange(8)
        else:
            del data[at:]
        log.write_bytes(bytes(data))
        intact = sum(1 for e in ends if e <= at)  # records wholly before the damage
        state, got = replay_all(folder)
        assert got[:intact] == [(ids, text) for ids, text in steps[:intact]]
        # a flipped bit inside a record is caught by its checksum (or, in its header, by the framing)
        assert len(got) == intact
        report = state.report
        kept = ends[intact - 1] if intact else len(LOG_HEADER)
        assert report.dropped_bytes == len(data) - kept
        if report.dropped_bytes:
            assert (folder / report.dropped_saved_to).read_bytes() == bytes(data[kept:])
        assert log.stat().st_size == kept
        # the log goes on after the cut
        pos = sum(len(ids) for ids, _ in got)
        chars = sum(len(text) for _, text in got)
        state.append(pos, [7], [chars + 1], text="x", chars=chars + 1, consumed=chars + 1)
        state.close()
        _, again = replay_all(folder)
        assert again == got + [([7], "x")]


def test_records_out_of_step_are_refused(tmp_path: Path) -> None:
    """A record that does not continue the stream (edited or spliced log) ends the replay there."""
    ends = write_records(tmp_path / "a", [([1, 2], "ab"), ([3], "c")])
    write_records(tmp_path / "b", [([9, 9, 9], "zzz")])
    first = (tmp_path / "a" / P.LOG_NAME).read_bytes()[: ends[0]]
    foreign = (tmp_path / "b" / P.LOG_NAME).read_bytes()[len(LOG_HEADER) :]
    (tmp_path / "a" / P.LOG_NAME).write_bytes(first + foreign)  # record 0 of another stream as record 1
    state, got = replay_all(tmp_path / "a")
    assert got == [([1, 2], "ab")]
    assert "record number" in (state.report.dropped_reason or "")
    state.close()


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path: Path) -> None:
    write_records(tmp_path, [([1, 2], "ab"), ([999], "c")])
    small = msgspec.structs.replace(LAYOUT, vocab_size=500)
    (tmp_path / P.META_NAME).write_bytes(
        msgspec.json.encode(msgspec.structs.replace(P.read_meta(tmp_path), layout=small))
    )
    state = open_dir(tmp_path, layout=small)
    state.recover()
    assert [ids for _, ids, _ in state.replay()] == [[1, 2]]
    assert "vocabulary" in (state.report.dropped_reason or "")
    state.close()


def test_second_engine_on_a_directory_is_refused(tmp_path: Path) -> None:
    first = open_dir(tmp_path)
    with pytest.raises(StateError, match=f"in use by another engine \\(pid {os.getpid()}\\)"):
        open_dir(tmp_path)
    first.close()
    open_dir(tmp_path).close()  # released on close


def test_incompatible_layout_or_tokenizer_is_refused(tmp_path: Path) -> None:
    open_dir(tmp_path).close()
    with pytest.raises(StateError, match=r"segment_tokens=8.*segment_tokens=16"):
        open_dir(tmp_path, layout=msgspec.structs.replace(LAYOUT, segment_tokens=16))
    with pytest.raises(StateError, match="another tokenizer"):
        open_dir(tmp_path, layout=msgspec.structs.replace(LAYOUT, tokenizer_sha256="1" * 64))
    open_dir(tmp_path).close()  # a refused open leaves the directory usable


def test_state_dir_paths_are_validated(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StateError, match="not a directory"):
        open_dir(a_file)
    with pytest.raises(StateError, match="cannot be created"):
        open_dir(a_file / "sub")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StateError, match="not empty and holds no xl3m-stream state"):
        open_dir(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # nothing written there
    with pytest.raises(StateError, match="not a usable path"):
        P.check_state_dir("bad\0path")
    # a state directory reached through a symlink is fine (resolved) ...
    real = tmp_path / "real"
    open_dir(real).close()
    (tmp_path / "link").symlink_to(real)
    open_dir(tmp_path / "link").close()
    # ... but a file inside it that is a symlink is never followed
    target = tmp_path / "elsewhere.log"
    target.write_bytes(LOG_HEADER)
    (real / P.LOG_NAME).unlink()
    (real / P.LOG_NAME).symlink_to(target)
    with pytest.raises(StateError):
        open_dir(real)
    assert target.read_bytes() == LOG_HEADER


def within(seconds: float, fn, *args):
    """``fn(*args)``'s result or exception, failing the test if it hangs (a FIFO opened blocking)."""
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:  # handed to the test
            out.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"{fn.__name__} hung"
    ok, value = out[0]
    if not ok:
        raise value
    return value


@pytest.mark.parametrize("name", [P.LOCK_NAME, P.LOG_NAME])
def test_a_hard_link_planted_in_a_state_dir_is_never_written_through(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    write_records(state, [([1, 2], "ab")])
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (state / name).unlink()
    os.link(victim, state / name)
    with pytest.raises(StateError, match="hard link"):
        open_dir(state)
    assert victim.read_bytes() == b"precious"


def test_atomic_writes_replace_a_hard_link_planted_at_their_temporary_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    target = tmp_path / "snapshot-0000000000000001.bin"
    os.link(victim, target.with_name(f"{P.TMP_PREFIX}{target.name}.{os.getpid()}"))
    P.write_atomic(target, b"snapshot bytes")
    assert target.read_bytes() == b"snapshot bytes" and victim.read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
@pytest.mark.parametrize("name", [P.META_NAME, P.LOG_NAME, P.LOCK_NAME, "snapshot-0000000000000009.bin"])
def test_special_files_planted_in_a_state_dir_are_refused_without_hanging(tmp_path: Path, name: str, kind: str) -> None:
    state = tmp_path / "state"
    write_records(state, [([1, 2], "ab")])
    target = state / name
    if target.exists():
        target.unlink()
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    if name.startswith("snapshot-"):  # an unusable snapshot: skipped, reported, the log replayed
        state_dir = within(10, open_dir, state)
        within(10, state_dir.recover)
        assert [ids for _, ids, _ in state_dir.replay()] == [[1, 2]]
        assert "not a regular file" in state_dir.report.skipped_snapshots[0]
        state_dir.close()
        assert within(10, P.read_snapshot, state) is None
        return
    with pytest.raises(StateError, match="not a regular file"):
        within(10, open_dir, state)
    if name != P.LOCK_NAME:
        with pytest.raises(StateError, match="not a regular file"):
            within(10, read_stream, state)


def test_files_are_private(tmp_path: Path) -> None:
    state = open_dir(tmp_path / "s")
    state.close()
    assert (tmp_path / "s").stat().st_mode & 0o077 == 0
    for name in (P.META_NAME, P.LOG_NAME, P.LOCK_NAME):
        assert (tmp_path / "s" / name).stat().st_mode & 0o077 == 0, name


def test_a_format_1_directory_is_upgraded_on_open_and_a_newer_one_refused(tmp_path: Path) -> None:
    """Records may now carry an input mark, which xl3m-stream 0.1 cannot read: a directory it
    wrote (format 1) is marked format 2 when opened, so 0.1 refuses it cleanly instead of cutting
    the log at the first new record; a format this version does not know is refused."""
    write_records(tmp_path, [([1, 2], "ab")])
    meta_path = tmp_path / P.META_NAME
    v1 = msgspec.structs.replace(P.read_meta(tmp_path), version=1)
    meta_path.write_bytes(msgspec.json.encode(v1))
    assert P.read_meta(tmp_path).version == 1  # still readable as it is
    state, got = replay_all(tmp_path)
    assert got == [([1, 2], "ab")] and state.report.upgraded_from == 1
    assert any("format 1" in note for note in state.report.notes())
    state.close()
    assert P.read_meta(tmp_path) == msgspec.structs.replace(v1, version=P.FORMAT_VERSION)
    assert P.stream_id(P.read_meta(tmp_path)) == P.stream_id(v1)  # the same stream
    meta_path.write_bytes(msgspec.json.encode(msgspec.structs.replace(v1, version=P.FORMAT_VERSION + 1)))
    with pytest.raises(StateError, match=f"format version {P.FORMAT_VERSION + 1}"):
        open_dir(tmp_path)


def test_unreadable_meta_or_log_header_is_a_state_error(tmp_path: Path) -> None:
    open_dir(tmp_path).close()
    (tmp_path / P.META_NAME).write_text("{not json")
    with pytest.raises(StateError, match=r"meta\.json is unreadable"):
        open_dir(tmp_path)
    shutil.rmtree(tmp_path)
    open_dir(tmp_path).close()
    (tmp_path / P.LOG_NAME).write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(StateError, match="not an xl3m-stream log"):
        open_dir(tmp_path)


def test_no_pickle_and_safe_model_loading_in_the_package() -> None:
    root = Path(P.__file__).parent.parent  # the xl3m_stream package (persistence is a subpackage)
    sources = {p: p.read_text(encoding="utf-8") for p in root.rglob("*.py")}
    for path, text in sources.items():
        for banned in ("import pickle", "from pickle", "cPickle", "import dill", "joblib", "torch.load(", "marshal."):
            assert banned not in text, f"{banned!r} in {path}"
    assert EngineConfig().trust_remote_code is False and EngineConfig().allow_download is False
    assert "use_safetensors=True" in sources[root / "models.py"]


# ------------------------------------------------------------------------------- engine restarts


def stream_pieces(tokenizer) -> list:
    """A stream mixing text chunks with metadata, bytes that split a character, and token ids."""
    lines = [
        TextChunk(text=f"line {i}: The sky is blue.\n", meta={"line": i, "service": f"s{i % 3}"}) for i in range(12)
    ]
    ids = tokenizer.encode(" The pass key is 12345.", add_special_tokens=False)
    return [*lines[:6], b"caf\xc3", b"\xa9 ok\n", ids, *lines[6:], "tail without newline"]


def held_segments(state_dir: Path) -> list[tuple]:
    got = read_stream(state_dir)
    return [(s.seq, s.start, s.end, s.tokens, s.meta) for s in got.segments]


async def test_restart_goes_on_exactly_where_it_stopped(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    """Stopping mid-stream (a character split across feeds, text held by the tokenizer) and
    resuming gives the same stream, segments and metadata as never stopping."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    async with Engine(config(tiny_model_dir, whole)) as engine:
        pieces = stream_pieces(engine.tokenizer)
        for piece in pieces:
            await engine.feed(piece)
        await engine.flush()
        expected_tokens = engine.stream_tokens
    cut = 7  # after b"caf\xc3": the decoder holds half a character, the tokenizer some text
    async with Engine(config(tiny_model_dir, split)) as engine:
        for piece in pieces[:cut]:
            await engine.feed(piece)
        assert engine.recovery is not None and engine.recovery.created
    async with Engine(config(tiny_model_dir, split)) as engine:
        report = engine.recovery
        assert report is not None and not report.created and report.snapshot is not None
        for piece in pieces[cut:]:
            await engine.feed(piece)
        await engine.flush()
        assert engine.stream_tokens == expected_tokens
        answer = await engine.ask("What is the pass key?")
        assert answer.segments
    assert held_segments(split) == held_segments(whole)
    text = read_stream(split)
    assert engine.tokenizer.decode(text.ids).startswith("line 0: The sky is blue.\n")
    assert "café ok\n" in engine.tokenizer.decode(text.ids)


async def test_auto_overlap_follows_the_state_dir_it_reopens(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    """``segment_overlap="auto"`` is segment_tokens // 8 for a new stream, and the overlap a
    state dir was cut with when it reopens one (a dir written before the default changed keeps
    its layout instead of being refused); a number that differs from the dir's is refused."""
    text = "".join(f"line {i}: the pass key is not here.\n" for i in range(40))
    old, new = tmp_path / "old", tmp_path / "new"
    async with Engine(config(tiny_model_dir, old, segment_overlap=0)) as engine:
        await engine.feed(text)
    async with Engine(config(tiny_model_dir, new)) as engine:
        assert engine.config.segment_overlap == 4  # 32 // 8
        await engine.feed(text)
        await engine.flush()
    async with Engine(config(tiny_model_dir, old)) as engine:
        assert engine.config.segment_overlap == 0  # what the dir was cut with
        await engine.feed(text)
        await engine.flush()
    segs = read_stream(old).segments
    assert all(b.start == a.end for a, b in zip(segs, segs[1:]))
    segs = read_stream(new).segments
    assert all(b.start == a.end - 4 for a, b in zip(segs, segs[1:]))
    with pytest.raises(StateError, match=r"segment_overlap=0.*segment_overlap=4"):
        async with Engine(config(tiny_model_dir, old, segment_overlap=4)):
            pass
    async with Engine(config(tiny_model_dir, tmp_path / "long", segment_tokens=64)) as engine:
        assert engine.config.segment_overlap == 8
    with pytest.raises(Exception, match="segment_overlap"):
        EngineConfig(segment_tokens=32, segment_overlap=32)
    assert EngineConfig(segment_tokens=256).overlap_tokens == 32


async def test_a_crash_image_holds_everything_acknowledged(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    """The directory as a killed process leaves it (no final snapshot) restores every feed that returned."""
    live, image = tmp_path / "live", tmp_path / "image"
    cfg = config(tiny_model_dir, live, snapshot_every_segments=10_000, snapshot_every_s=3600)
    async with Engine(cfg) as engine:
        for i in range(0, 900, 50):
            await engine.feed(TEXT[i : i + 50])
        await engine.checkpoint()
        await engine.feed(TEXT[900:1000])  # after the snapshot: only in the log
        shutil.copytree(live, image)  # the crash
        acknowledged = engine.stream_tokens
    async with Engine(config(tiny_model_dir, image)) as engine:
        report = engine.recovery
        assert report is not None and report.snapshot is not None and report.replayed_records >= 1
        assert engine.stream_tokens == acknowledged and report.chars == 1000
        await engine.feed(TEXT[1000:])
        await engine.flush()
        assert engine.stats().pending_segments == 0
        assert (await engine.ask("What is the pass key?")).segments
    got = read_stream(image)
    assert engine.tokenizer.decode(got.ids) + got.pending_text == TEXT


async def test_torn_tail_is_cut_reported_and_kept_aside(tiny_model_dir, tmp_path: Path, anyio_backend, capsys) -> None:
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        await engine.feed(TEXT[:600])
        await engine.flush()
        tokens = engine.stream_tokens
    log = state / P.LOG_NAME
    good = log.read_bytes()
    torn = P.frame(P.RECORD_MAGIC, b"\x99" * 40)[:30]  # a record whose write was cut short
    log.write_bytes(good + torn)
    async with Engine(config(tiny_model_dir, state)) as engine:
        report = engine.recovery
        assert report is not None and report.dropped_bytes == len(torn) and report.dropped_at == len(good)
        assert (state / report.dropped_saved_to).read_bytes() == torn
        assert engine.stream_tokens == tokens  # everything before it kept
        await engine.feed(" more")
    assert log.read_bytes().startswith(good)
    # the CLI says so in one line and goes on
    log.write_bytes(log.read_bytes() + b"XL3R\xff\xff")
    from xl3m_stream.cli import main

    argv = ["ask", "--state-dir", str(state), "-q", "What is the pass key?", "--model", str(tiny_model_dir)]
    rc = await anyio.to_thread.run_sync(main, argv)  # (the CLI runs its own event loop)
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    notes = [line for line in err.splitlines() if "torn or corrupt log tail" in line]
    assert len(notes) == 1 and notes[0].startswith("xl3m-stream: note: ")


async def test_a_corrupt_snapshot_falls_back_to_an_older_one_or_the_log(
    tiny_model_dir, tmp_path: Path, anyio_backend
) -> None:
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        await engine.feed(TEXT[:500])
        await engine.checkpoint()
        await engine.feed(TEXT[500:900])
        tokens = engine.stream_tokens
    snaps = sorted(state.glob("snapshot-*.bin"))
    assert len(snaps) == 2
    data = bytearray(snaps[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    snaps[-1].write_bytes(bytes(data))
    async with Engine(config(tiny_model_dir, state)) as engine:
        report = engine.recovery
        assert report is not None and report.snapshot == snaps[0].name
        assert report.skipped_snapshots and "checksum" in report.skipped_snapshots[0]
        assert engine.stream_tokens == tokens
    for snap in state.glob("snapshot-*.bin"):
        snap.write_bytes(b"garbage")
    async with Engine(config(tiny_model_dir, state)) as engine:  # no snapshot: the whole log is replayed
        report = engine.recovery
        assert report is not None and report.snapshot is None and len(report.skipped_snapshots) == 2
        assert engine.stream_tokens == tokens and report.requeued_segments == engine.stats().segments_cut
        await engine.flush()
        assert len(engine.store) > 0


def record_starts(log: Path) -> list[int]:
    """Byte offset of every record in a log (its framing only)."""
    data = log.read_bytes()
    at, starts = len(LOG_HEADER), []
    while at + 12 <= len(data):
        starts.append(at)
        at += 12 + int.from_bytes(data[at + 4 : at + 8], "little")
    return starts


def plant(snapshot: Path, into: Path, *, strip_new_fields: bool = False) -> Path:
    """Copy ``snapshot`` into state ``into`` as its newest snapshot (optionally as written before
    snapshots named their stream and last record)."""
    data = snapshot.read_bytes()
    if strip_new_fields:
        payload = msgspec.msgpack.decode(data[12:])
        for name in ("stream_id", "last_record", "input"):
            payload.pop(name, None)
        payload["version"] = 1
        data = P.frame(P.SNAPSHOT_MAGIC, msgspec.msgpack.encode(payload))
    target = into / "snapshot-9999999999999999.bin"
    target.write_bytes(data)
    return target


@pytest.mark.parametrize("kind", ["another stream", "another stream, old format", "a diverged copy"])
async def test_a_snapshot_from_another_stream_is_refused_and_nothing_is_cut(
    tiny_model_dir, tmp_path: Path, anyio_backend, kind: str
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    async with Engine(config(tiny_model_dir, ours)) as engine:
        for i in range(0, 600, 60):
            await engine.feed(TEXT[i : i + 60])
    if kind == "a diverged copy":  # the same stream up to here, then another
        shutil.copytree(ours, theirs)
        async with Engine(config(tiny_model_dir, theirs)) as engine:
            await engine.feed("Then it went elsewhere: the pass key is 999.\n" * 6)
    async with Engine(config(tiny_model_dir, ours)) as engine:
        for i in range(600, len(TEXT), 60):
            await engine.feed(TEXT[i : i + 60])
        tokens = engine.stream_tokens
    if kind != "a diverged copy":
        async with Engine(config(tiny_model_dir, theirs)) as engine:
            await engine.feed("Another stream entirely: the pass key is 999.\n" * 5)
    foreign = sorted(theirs.glob("snapshot-*.bin"))[-1]
    offset = P.read_snapshot(theirs).log_offset
    log = ours / P.LOG_NAME
    assert offset < log.stat().st_size
    if kind != "a diverged copy":
        assert offset not in record_starts(log)  # it points inside a record of ours
    before = log.read_bytes()
    planted = plant(foreign, ours, strip_new_fields=kind.endswith("old format"))
    async with Engine(config(tiny_model_dir, ours)) as engine:
        report = engine.recovery
        assert report is not None and report.snapshot != planted.name
        assert len(report.skipped_snapshots) == 1 and planted.name in report.skipped_snapshots[0]
        assert report.dropped_bytes == 0  # nothing of our log was cut
        assert engine.stream_tokens == tokens
        assert not any("999" in engine.tokenizer.decode(list(e.segment.tokens)) for e in engine.store)
    assert log.read_bytes() == before
    assert (ours / (planted.name + ".unusable")).exists()


async def test_a_snapshot_written_before_stream_ids_still_restores(
    tiny_model_dir, tmp_path: Path, anyio_backend
) -> None:
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        await engine.feed(TEXT[:700])
        tokens = engine.stream_tokens
    newest = sorted(state.glob("snapshot-*.bin"))[-1]
    old = plant(newest, state, strip_new_fields=True)
    newest.unlink()
    async with Engine(config(tiny_model_dir, state)) as engine:
        report = engine.recovery
        assert report is not None and report.snapshot == old.name and not report.skipped_snapshots
        assert engine.stream_tokens == tokens and report.replayed_records == 0
        await engine.feed(TEXT[700:])
        await engine.flush()
    got = read_stream(state)
    assert engine.tokenizer.decode(got.ids) == TEXT


async def test_unscored_segments_are_scored_after_a_restart(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    state = tmp_path / "state"
    cfg = config(tiny_model_dir, state, batch_size=1, max_pending_segments=1000)
    release = threading.Event()
    async with Engine(cfg) as engine:
        replica = engine.replicas[0]
        real = replica.scorer.score_many

        def stalled(*args, **kwargs):
            release.wait(timeout=30)
            return real(*args, **kwargs)

        replica.scorer.score_many = stalled
        await engine.feed(TEXT[:800])
        cut = engine.stats().segments_cut
        assert cut > 3 and engine.stats().segments_scored == 0
        release.set()  # (the engine closes before the stalled batch reports back)
    async with Engine(cfg) as engine:
        report = engine.recovery
        # (the batch being scored at the close may have made it into the final snapshot)
        assert report is not None and cut - 1 <= report.requeued_segments <= cut and report.replayed_records == 0
        await engine.drain()
        assert engine.stats().segments_scored >= cut and len(engine.store) == 6


async def test_fsync_policies(tiny_model_dir, tmp_path: Path, anyio_backend, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []  # (inode, size) of each file put on stable storage
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((st.st_ino, st.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for policy in ("always", "never"):
        async with Engine(config(tiny_model_dir, tmp_path / policy, fsync=policy)) as engine:
            log_file = tmp_path / policy / "segments.log"
            inode = log_file.stat().st_ino
            for i in range(0, 300, 30):
                before = len(calls)
                await engine.feed(TEXT[i : i + 30])
                log_syncs = [size for ino, size in calls[before:] if ino == inode]
                if policy == "always":  # on disk, all of it, before feed returned
                    assert log_syncs and log_syncs[-1] == log_file.stat().st_size
                else:
                    assert not log_syncs
            if policy == "never":
                before = len(calls)
                await engine.checkpoint()  # a snapshot never covers log bytes that could be lost
                assert (inode, log_file.stat().st_size) in calls[before:]


async def test_a_failing_disk_stops_intake_and_loses_nothing(
    tiny_model_dir, tmp_path: Path, anyio_backend, monkeypatch
) -> None:
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        await engine.feed(TEXT[:400])
        acknowledged = read_stream(state)
        real_write = P.statedir._write_all  # what StateDir.append writes the log with

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(P.statedir, "_write_all", full)
        with pytest.raises(StateError, match="No space left on device"):
            await engine.feed(TEXT[400:800])
        with pytest.raises(StateError, match="no more input is taken"):
            await engine.feed("more")
        assert (await engine.ask("What is the pass key?")).segments  # what it holds still answers
        monkeypatch.setattr(P.statedir, "_write_all", real_write)
    got = read_stream(state)
    assert got.ids == acknowledged.ids and got.chars == acknowledged.chars == 400
    async with Engine(config(tiny_model_dir, state)) as engine:
        assert engine.recovery is not None and engine.recovery.chars == 400
        await engine.feed(TEXT[400:])  # the disk has room again: the stream goes on
        await engine.flush()
    got = read_stream(state)
    assert engine.tokenizer.decode(got.ids) == TEXT


async def test_question_keys_and_model_changes_survive_restarts(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        await engine.process([TEXT[:900]])
    async with Engine(config(tiny_model_dir, state)) as engine:
        answer = await engine.ask("What is the pass key?")
        assert answer.rescored == 0  # scored against this question before the restart: kept
        assert (await engine.ask("Which line is blue?")).rescored == len(engine.store)
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)  # same tokenizer, another model: scores are stale
    async with Engine(config(other, state)) as engine:
        assert engine.recovery is not None and engine.recovery.model_changed
        assert "another model" in " ".join(engine.recovery.notes())
        assert (await engine.ask("What is the pass key?")).rescored == len(engine.store)


async def test_refusals_leave_the_state_as_it_was(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        await engine.feed(TEXT[:300])
        with pytest.raises(StateError, match="in use"):
            async with Engine(config(tiny_model_dir, state)):
                pass
        with pytest.raises(InputError, match="JSON-compatible"):
            await engine.feed(TextChunk(text="x", meta={"obj": object()}))
    before = read_stream(state)
    with pytest.raises(StateError, match="segment_tokens"):
        async with Engine(config(tiny_model_dir, state, segment_tokens=64)):
            pass
    assert read_stream(state).ids == before.ids
    async with Engine(config(tiny_model_dir, state)) as engine:
        assert engine.recovery is not None and engine.recovery.chars == 300
    no_state = config(tiny_model_dir, state).replace(state_dir=None)
    async with Engine(no_state) as engine:
        with pytest.raises(StateError, match="needs a state_dir"):
            await engine.checkpoint()


async def test_rescan_scores_the_whole_kept_stream(tiny_model_dir, tmp_path: Path, anyio_backend) -> None:
    """Segments evicted on arrival are still in the log: a re-scan scores every one against the question."""
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state, question=None, store_segments=3)) as engine:
        await engine.process([TEXT, "The pass key is 12345.\n"])
        kept = read_stream(state).segments
        store = engine.store  # a reference taken before the re-scan stays the engine's store
        assert len(kept) > 3 and len(store) == 3
        scanned = await engine.rescan("What is the pass key?")
        assert scanned == len(kept)
        assert engine.store is store
        assert len(store) == 3 and len({e.question_id for e in store}) == 1
        assert {e.segment.seq for e in engine.store} <= {s.seq for s in kept}
        assert (await engine.ask("What is the pass key?")).rescored == 0  # already scored against it
    async with Engine(config(tiny_model_dir, state).replace(state_dir=None)) as engine:
        with pytest.raises(StateError, match="needs a state_dir"):
            await engine.rescan("What?")


async def test_a_damaged_record_under_the_snapshot_stops_a_rescan_and_keeps_the_store(
    tiny_model_dir, tmp_path: Path, anyio_backend
) -> None:
    """A byte flipped in a record the snapshot covers: the restart does not need it, but a
    re-scan does. It must say where the log is damaged and leave the store as it was."""
    state = tmp_path / "state"
    cfg = config(tiny_model_dir, state, question=None, store_segments=3)
    async with Engine(cfg) as engine:
        for i in range(0, len(TEXT), 100):
            await engine.feed(TEXT[i : i + 100])
        await engine.flush()
        tokens, cut = engine.stream_tokens, engine.stats().segments_cut
    log = state / P.LOG_NAME
    data = bytearray(log.read_bytes())
    data[len(LOG_HEADER) + 600] ^= 0x10  # inside an early record
    log.write_bytes(bytes(data))
    async with Engine(cfg) as engine:
        report = engine.recovery
        assert report is not None and report.snapshot is not None and report.replayed_records == 0
        assert engine.stream_tokens == tokens
        before = sorted((e.segment.seq, e.score, e.question_id) for e in engine.store)
        with pytest.raises(StateError, match=r"damaged at byte \d+.*of the \d+ segments.*left as it was") as err:
            await engine.rescan("What is the pass key?")
        assert f"of the {cut} segments" in str(err.value)
        assert sorted((e.segment.seq, e.score, e.question_id) for e in engine.store) == before
        assert len(engine.store) == 3
        await engine.feed(" the stream goes on")
    assert log.read_bytes()[: len(data)] == bytes(data)  # the damaged bytes are still there to inspect
    assert read_stream(state).torn is not None


def test_ingest_resumes_its_input_after_a_crash_and_takes_only_what_was_appended(
    tiny_model_dir, tmp_path: Path
) -> None:
    """``xl3m-stream ingest FILE`` killed midway and run again goes on where the log stops, and a
    file grown since a complete ingest adds only its new end; a rewritten file is refused."""
    import contextlib
    import io

    from xl3m_stream.cli import main

    src, state = tmp_path / "app.log", tmp_path / "state"
    src.write_text(TEXT)
    argv = ["ingest", str(src), "--state-dir", str(state), "--model", str(tiny_model_dir), "--segment-tokens", "32"]

    def ingest(*extra: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*argv, *extra])
        return code, err.getvalue()

    assert ingest() == (0, "")
    whole = read_stream(state)
    shutil.rmtree(state)
    # the crash: a run that took the first 1,000 characters, as a killed ingest leaves it
    source = f"text:{src.resolve()} ({src.stat().st_dev}:{src.stat().st_ino})"

    async def partial() -> None:
        async with Engine(config(tiny_model_dir, state, question=None)) as engine:
            await engine.mark_input(source, 0)
            for i in range(0, 1000, 100):
                await engine.feed(TextChunk(text=TEXT[i : i + 100]))

    anyio.run(partial)
    assert ingest() == (0, f"xl3m-stream: note: resumed {src} at character 1,000, where an earlier run on it stopped\n")
    again = read_stream(state)
    assert again.ids == whole.ids  # resumed at character 1,000: nothing duplicated, nothing lost
    code, err = ingest()  # nothing new
    assert code == 0 and err == f"xl3m-stream: note: nothing new in {src}: the state already holds all of it\n"
    assert read_stream(state).ids == whole.ids
    with src.open("a") as f:
        f.write("appended later: The pass key is 12345.\n")
    code, err = ingest()
    assert code == 0 and "took only what was appended" in err and f"character {len(TEXT):,}" in err
    grown = read_stream(state)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.decode(grown.ids) == TEXT + "appended later: The pass key is 12345.\n"
    rewritten = (TEXT + "appended later: The pass key is 12345.\n").replace("line 3:", "LINE 3:") + "and more\n"
    src.write_text(rewritten)  # rewritten in place (the same file)
    code, err = ingest()
    assert code == 1 and err.count("\n") == 1 and "changed since" in err and "--from-start" in err
    assert read_stream(state).ids == grown.ids
    assert ingest("--from-start")[0] == 0  # taken again from its start, as asked
    assert tok.decode(read_stream(state).ids) == tok.decode(grown.ids) + rewritten


def test_sync_engine_with_a_state_dir(tiny_model_dir, tmp_path: Path) -> None:
    from xl3m_stream import SyncEngine

    state = tmp_path / "state"
    with SyncEngine(config(tiny_model_dir, state)) as engine:
        engine.process([TEXT[:400]])
        engine.checkpoint()
        assert engine.recovery is not None and engine.recovery.created
    with SyncEngine(config(tiny_model_dir, state)) as engine:
        assert engine.recovery is not None and engine.recovery.chars == 400
        assert engine.rescan() == len(read_stream(state).segments)


async def test_segments_whose_scoring_failed_are_scored_after_a_restart(
    tiny_model_dir, tmp_path: Path, anyio_backend
) -> None:
    """A device fault on every replica: the segments are reported, kept aside, and not lost."""
    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state)) as engine:
        replica = engine.replicas[0]

        def broken(*args, **kwargs):
            raise RuntimeError("CUDA error: device lost (simulated)")

        replica.scorer.score_many = broken
        await engine.process([TEXT[:600]])
        failed = {s.seq for s in engine.failed_segments}
        assert failed and engine.stats().segments_failed == len(failed) and len(engine.store) == 0
    async with Engine(config(tiny_model_dir, state)) as engine:
        assert engine.recovery is not None and engine.recovery.requeued_segments == len(failed)
        await engine.drain()
        assert engine.failed_segments == [] and {e.segment.seq for e in engine.store} <= failed
        assert len(engine.store) == min(6, len(failed))


def test_ingest_remembers_every_input_not_only_the_last(tiny_model_dir, tmp_path: Path) -> None:
    """a, then b, then a again: the second ingest of a adds nothing (it took a twice before), also
    after a crash that left a half-taken before b was ingested."""
    import contextlib
    import io

    from xl3m_stream.cli import main

    a, b, state = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "state"
    a.write_text(TEXT[:1500])
    b.write_text(TEXT[1500:])

    def ingest(path: Path) -> tuple[int, str]:
        err = io.StringIO()
        argv = [
            "ingest",
            str(path),
            "--state-dir",
            str(state),
            "--model",
            str(tiny_model_dir),
            "--segment-tokens",
            "32",
        ]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return code, err.getvalue()

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert ingest(a)[0] == 0 and ingest(b)[0] == 0
    code, err = ingest(a)
    assert code == 0 and "nothing new" in err, err
    assert tok.decode(read_stream(state).ids) == TEXT  # a once, then b once

    # a killed ingest of a (half of it taken), then b, then a again: a's rest, once
    shutil.rmtree(state)
    source = f"text:{a.resolve()} ({a.stat().st_dev}:{a.stat().st_ino})"

    async def partial() -> None:
        async with Engine(config(tiny_model_dir, state, question=None)) as engine:
            await engine.mark_input(source, 0)
            await engine.feed(TextChunk(text=TEXT[:700]))

    anyio.run(partial)
    assert ingest(b)[0] == 0
    code, err = ingest(a)
    assert code == 0 and "resumed" in err and "character 700" in err, err
    assert tok.decode(read_stream(state).ids) == TEXT[:700] + TEXT[1500:] + TEXT[700:1500]
