"""Durable engine state: an append-only stream log and atomic snapshots in a state directory.

The engine (``EngineConfig.state_dir``) writes everything it takes into the stream to an
append-only log *before* ``feed`` returns, and now and then a snapshot of its scored state.
An engine started on the same directory loads the newest usable snapshot and replays the log
records written after it, so nothing acknowledged is lost across a crash. This module owns
the on-disk format and its checks; it is synchronous and knows nothing of models or of the
event loop (the engine calls it, off the loop where it may block). See docs/RELIABILITY.md.

Layout of a state directory::

    meta.json               format version, model, tokenizer fingerprint, segment layout
    lock                    flock()ed by the engine that uses the directory (holds its pid)
    segments.log            header b"XL3MLOG\\x01", then framed records (StreamRecord)
    snapshot-<records>.bin  one framed EngineSnapshot each; the two newest are kept
    segments.log.corrupt-*  a torn or corrupt log tail moved aside at recovery (kept for you)

Framing (log records and snapshots alike)::

    magic (4 bytes) | payload length (u32 LE) | CRC-32 of payload (u32 LE) | payload (msgpack)

Nothing is ever unpickled: payloads decode into typed msgspec Structs, which reject any
value of the wrong type, and every record and snapshot is checked for consistency before use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import struct
import sys
import time
import zlib
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec

from ._version import __version__
from .errors import StateError
from .relevance import LexicalState
from .segment import Segment
from .segmenter import MetaIndex, MetaIndexState, Segmenter, SegmenterState
from .sources import DecodeStats
from .store import SegmentStore, StoreSnapshot
from .tokenizer import CONTEXT_CHARS, TokenizerState

__all__ = [
    "FORMAT_VERSION",
    "EngineSnapshot",
    "InputMark",
    "Layout",
    "LogReader",
    "PendingSegment",
    "RecordRef",
    "RecoveryReport",
    "StateDir",
    "StateMeta",
    "StreamContents",
    "StreamRecord",
    "check_state_dir",
    "read_meta",
    "read_snapshot",
    "read_stream",
    "stream_id",
]

log = logging.getLogger("xl3m_stream.persistence")

Fsync = Literal["always", "interval", "never"]

FORMAT_VERSION = 2
"""Written into meta.json and snapshots. 2: log records may carry an input mark (``StreamRecord.input``)."""
READABLE_VERSIONS = (1, 2)
"""Formats this version reads; a format-1 directory is marked format 2 when an engine opens it."""
STATE_KIND = "xl3m-stream-state"
META_NAME = "meta.json"
LOCK_NAME = "lock"
LOG_NAME = "segments.log"
LOG_HEADER = b"XL3MLOG\x01"
RECORD_MAGIC = b"XL3R"
SNAPSHOT_MAGIC = b"XL3S"
SNAPSHOT_RE = re.compile(r"snapshot-(\d{16})\.bin")
TMP_PREFIX = ".tmp-"
KEEP_SNAPSHOTS = 2
MAX_RECORD_BYTES = 64 << 20
"""A log record never comes near this (a feed slice is at most a few hundred KB); a larger
length field means corruption, and is not trusted with an allocation."""

_FRAME = struct.Struct("<4sII")
FLAG_END_DOC = 1
"""The incremental tokenizer was flushed: a document ended at ``consumed``."""
FLAG_CUT = 2
"""The segmenter was flushed after this record's ids (``Engine.flush``)."""


# ------------------------------------------------------------------------------- records


class Layout(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What decides how the logged token ids are cut into segments: must match to resume."""

    segment_tokens: int
    segment_overlap: int
    segment_cut: str
    boundary_ids: list[int] | None
    """Newline token ids for ``segment_cut="lines"`` (so the log can be re-cut without a tokenizer)."""
    vocab_size: int
    tokenizer_sha256: str
    """Fingerprint of the tokenizer's vocabulary: token ids mean nothing under another one."""

    def segmenter(self) -> Segmenter:
        """A fresh segmenter that cuts as the logged stream was cut (no tokenizer needed)."""
        boundary = frozenset(self.boundary_ids) if self.boundary_ids is not None else None
        return Segmenter(self.segment_tokens, overlap=self.segment_overlap, boundary_ids=boundary)

    @property
    def id_bytes(self) -> int:
        """Bytes per token id in the log (little-endian unsigned)."""
        return 2 if self.vocab_size <= 1 << 16 else 4


class StateMeta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Contents of ``meta.json``, written once when the directory is created."""

    kind: str
    version: int
    created: float
    library: str
    model: str
    """The model as configured (the CLI uses it when ``--model`` is not given)."""
    model_name: str
    layout: Layout


class InputMark(msgspec.Struct, frozen=True, kw_only=True, array_like=True, forbid_unknown_fields=True):
    """How much of one input (a file being ingested) the stream holds, logged in order with it.

    Written when text of ``source`` is about to be fed, and when all of it was: from the last
    mark and the stream's characters, a restart knows where to resume that input.
    """

    source: str
    """The input's identity (the CLI: its format, real path, device and inode)."""
    taken: int
    """Characters of the input's text in the stream when the mark was written."""
    at: int
    """The stream's characters (text given to the incremental tokenizer) at that moment."""
    complete: bool = False
    """The input had ended: all of its text was taken."""
    digest: str = ""
    """SHA-256 (hex) of the input's first ``taken`` characters (UTF-8), or "" if not recorded."""

    def taken_by(self, chars: int) -> int:
        """Characters of the input in the stream once it holds ``chars`` characters: the text fed
        after an incomplete mark is this input's (one feeder: the ingest that wrote the mark)."""
        return self.taken if self.complete else self.taken + max(0, chars - self.at)


class StreamRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True, forbid_unknown_fields=True):
    """One intake step of the engine, as logged (one ``feed`` slice, a token-id feed, a flush).

    Replaying the records in order rebuilds the token stream, the segments and the incremental
    tokenizer's pending text exactly; ``n``, ``pos`` and ``chars`` let every record be checked
    against the ones before it.
    """

    n: int
    """Record number, from 0."""
    pos: int
    """Stream tokens before this record's ids."""
    chars: int
    """Characters of text given to the incremental tokenizer so far, this record's ``text`` included."""
    consumed: int
    """Of those, the characters already turned into token ids."""
    ids: bytes = b""
    """Token ids taken into the stream, little-endian (``Layout.id_bytes`` each)."""
    ends: list[int] = []
    """For ids that came from text: each one's character end, as the difference to the previous
    one (the first to the previous record's ``consumed``). Empty for ids fed as ids."""
    text: str = ""
    """Text given to the incremental tokenizer."""
    meta: dict[str, Any] | None = None
    """Source metadata of ``text`` (a ``TextChunk``'s meta)."""
    flags: int = 0
    """``FLAG_END_DOC`` | ``FLAG_CUT``."""
    held: bytes = b""
    """Bytes of an incomplete UTF-8 character held back after this record (a bytes feed)."""
    time: float = 0.0
    input: InputMark | None = None
    """A mark of the input being ingested (a record of its own, with no text or ids)."""


class RecordRef(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Where a log record starts and the CRC-32 in its frame header (ties a snapshot to its log)."""

    offset: int
    crc: int


class PendingSegment(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A segment cut but not yet scored, with the question it is to be scored against."""

    segment: Segment
    question: list[int] | None
    """The rolling question window (token ids); None: the engine's explicit question."""


class EngineSnapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The engine's state after the first ``log_records`` records of the log."""

    version: int
    time: float
    log_offset: int
    """Byte offset in the log just after the records this snapshot covers."""
    log_records: int
    position: int
    """Stream tokens taken."""
    chars: int
    """Characters given to the incremental tokenizer."""
    held: bytes
    tokenizer: TokenizerState
    segmenter: SegmenterState
    meta_index: MetaIndexState
    recent: list[int]
    """The stream's last tokens (rolling question windows)."""
    store: StoreSnapshot
    questions: list[list[int]]
    """Question token ids; a store entry's ``question_id`` k >= 1 refers to ``questions[k - 1]``."""
    unscored: list[PendingSegment]
    """Segments cut but not scored (queued, in flight, or failed): scored again after a restart."""
    counters: dict[str, int]
    decode: DecodeStats
    stream_id: str = ""
    """The stream this snapshot belongs to (:func:`stream_id` of the directory's ``meta.json``);
    empty in snapshots written before it was recorded."""
    last_record: RecordRef | None = None
    """The last record it covers, as the log frames it (None: it covers none, or was written
    before this was recorded). With ``stream_id`` it ties the snapshot to these log bytes."""
    input: InputMark | None = None
    """The last input mark among the records it covers."""
    inputs: list[InputMark] = []
    """The latest mark of each other input it remembers (settled: no text after it is theirs)."""
    lexical: LexicalState | None = None
    """The lexical signal's running document frequencies (None: off, or an older snapshot;
    then they restart from the segments scored after it)."""


class RecoveryReport(msgspec.Struct, kw_only=True):
    """What opening a state directory found and did (``Engine.recovery``)."""

    state_dir: str
    created: bool = False
    """The directory held no state: a new stream starts."""
    snapshot: str | None = None
    """The snapshot file restored, if any."""
    snapshot_records: int = 0
    """Log records the snapshot covered (not replayed)."""
    replayed_records: int = 0
    """Log records replayed after the snapshot."""
    requeued_segments: int = 0
    """Segments queued for scoring again (cut after the snapshot, or not scored before the stop)."""
    tokens: int = 0
    """Stream tokens restored."""
    chars: int = 0
    """Characters of text taken into the stream (the incremental tokenizer's input), restored."""
    log_bytes: int = 0
    skipped_snapshots: list[str] = []
    """Snapshots that could not be used, each with the reason."""
    dropped_bytes: int = 0
    """Bytes of a torn or corrupt log tail that were cut off (0: none)."""
    dropped_at: int | None = None
    dropped_reason: str | None = None
    dropped_saved_to: str | None = None
    """Where the cut-off bytes were kept."""
    model_changed: bool = False
    """The state was written with another model (same tokenizer): stored scores count as stale."""
    upgraded_from: int | None = None
    """The directory was in this older format; it is now marked with the current one."""
    seconds: float = 0.0

    def notes(self) -> list[str]:
        """One line per thing a user should know (empty when the recovery was clean)."""
        out = []
        if self.dropped_bytes:
            out.append(
                f"state {self.state_dir}: a torn or corrupt log tail was cut off ({self.dropped_reason}; "
                f"{self.dropped_bytes} bytes at offset {self.dropped_at}, kept in {self.dropped_saved_to}); "
                f"everything before it was kept"
            )
        for skipped in self.skipped_snapshots:
            out.append(f"state {self.state_dir}: snapshot not used: {skipped}")
        if self.model_changed:
            out.append(f"state {self.state_dir}: written with another model; stored scores will be recomputed")
        if self.upgraded_from is not None:
            out.append(
                f"state {self.state_dir}: upgraded from format {self.upgraded_from} to {FORMAT_VERSION} "
                f"(older xl3m-stream versions will refuse it)"
            )
        return out


class StreamContents(msgspec.Struct, kw_only=True):
    """The stream held in a state directory's log (see :func:`read_stream`)."""

    ids: list[int]
    """Every token id taken, in order."""
    pending_text: str
    """Text taken but not yet tokenised (it becomes ids with the next feed or flush)."""
    chars: int
    """Characters of text taken (``pending_text`` included)."""
    segments: list[Segment]
    """The segments cut from ``ids`` (with source metadata), in order."""
    records: int
    torn: str | None = None
    """Why reading stopped before the end of the file (a torn tail), or None."""


# ------------------------------------------------------------------------------- framing


def frame(magic: bytes, payload: bytes) -> bytes:
    """``payload`` with its magic, length and CRC-32 in front."""
    return _FRAME.pack(magic, len(payload), zlib.crc32(payload)) + payload


def read_frame(f: BinaryIO, magic: bytes, limit: int) -> tuple[bytes | None, str | None]:
    """Read one frame at the file's position: (payload, None), (None, None) at a clean end,
    or (None, reason) for a torn or corrupt frame. ``limit`` = bytes left in the file."""
    header = f.read(_FRAME.size)
    if not header:
        return None, None
    if len(header) < _FRAME.size:
        return None, f"torn record header ({len(header)} of {_FRAME.size} bytes)"
    got, length, crc = _FRAME.unpack(header)
    if got != magic:
        return None, f"bad record magic {got!r}"
    if magic == RECORD_MAGIC and length > MAX_RECORD_BYTES:
        return None, f"implausible record length {length}"
    if length > limit - _FRAME.size:
        return None, f"torn record (its {length} bytes run past the end of the file)"
    payload = f.read(length)
    if len(payload) < length:
        return None, "torn record (the file ends inside it)"
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch"
    return payload, None


def encode_ids(ids: Sequence[int], id_bytes: int) -> bytes:
    """Token ids as little-endian unsigned ints of ``id_bytes`` bytes."""
    arr = array("H" if id_bytes == 2 else "I", ids)
    if arr.itemsize != id_bytes:  # pragma: no cover - exotic platforms
        arr = array("L", ids)
    if sys.byteorder == "big":  # pragma: no cover
        arr.byteswap()
    return arr.tobytes()


def decode_ids(data: bytes, id_bytes: int) -> list[int]:
    """The inverse of :func:`encode_ids`. Raises ValueError for a length that is not a multiple."""
    if len(data) % id_bytes:
        raise ValueError(f"{len(data)} bytes of token ids is not a multiple of {id_bytes}")
    arr = array("H" if id_bytes == 2 else "I")
    arr.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        arr.byteswap()
    return arr.tolist()


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(StreamRecord)
_snapshot_decoder = msgspec.msgpack.Decoder(EngineSnapshot)


# ------------------------------------------------------------------------------- paths


def check_state_dir(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can serve as a state directory and return it resolved; create nothing.

    It must be an existing directory we may write (a state directory, or an empty one), or
    a path whose nearest existing ancestor is a writable directory. Symbolic links are
    resolved; files inside a state directory are never followed as links.
    """
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise StateError(f"state_dir: not a usable path: {raw!r}")
    try:
        resolved = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise StateError(f"state dir {raw}: cannot resolve the path: {exc}") from None
    if resolved.exists():
        if not resolved.is_dir():
            raise StateError(f"state dir {raw} exists and is not a directory")
        if not os.access(resolved, os.R_OK | os.W_OK | os.X_OK):
            raise StateError(f"state dir {raw} is not writable")
        if not (resolved / META_NAME).exists():
            foreign = [e.name for e in resolved.iterdir() if e.name != LOCK_NAME and not e.name.startswith(TMP_PREFIX)]
            if foreign:
                raise StateError(
                    f"state dir {raw} is not empty and holds no xl3m-stream state ({META_NAME}); "
                    f"use a new or empty directory"
                )
        return resolved
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StateError(f"state dir {raw} cannot be created: {ancestor} is not a writable directory")
    return resolved


def read_meta(path: str | os.PathLike[str]) -> StateMeta | None:
    """The ``meta.json`` of a state directory, or None where there is none. Raises StateError if unreadable."""
    folder = check_state_dir(path)
    meta_path = folder / META_NAME
    if not meta_path.exists():
        return None
    try:
        fd = _open_file(meta_path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            data = f.read(1 << 20)
        meta = msgspec.json.decode(data, type=StateMeta)
    except (OSError, msgspec.DecodeError) as exc:
        raise StateError(f"state dir {folder}: {META_NAME} is unreadable: {exc}") from None
    if meta.kind != STATE_KIND:
        raise StateError(f"state dir {folder}: {META_NAME} is not an xl3m-stream state (kind {meta.kind!r})")
    if meta.version not in READABLE_VERSIONS:
        raise StateError(
            f"state dir {folder}: format version {meta.version}, this xl3m-stream reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    return meta


def stream_id(meta: StateMeta) -> str:
    """The identity of the stream a state directory holds, derived from its ``meta.json``
    (written once, when the stream began): snapshots carry it, and one from another stream
    is refused."""
    import hashlib

    return hashlib.sha256(f"{meta.kind}/{meta.created!r}".encode()).hexdigest()[:32]


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _open_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a file of a state directory: only a regular file, never through a symlink (OSError
    ELOOP), never blocking (a FIFO planted there), and for writing only if no other name links
    to it (a hard link planted there is not written through). Raises StateError for the rest."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except IsADirectoryError:  # (opened for writing)
        raise StateError(
            f"{path} is not a regular file (a directory): refused; remove it or use another directory"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a file")
            raise StateError(f"{path} is not a regular file ({kind}): refused; remove it or use another directory")
        if flags & (os.O_WRONLY | os.O_RDWR) and st.st_nlink != 1:
            raise StateError(
                f"{path} has {st.st_nlink} hard links: refused (writing it would change the other names too); "
                f"remove it or use another directory"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so that it holds either its old contents or ``data``, never a mix:
    a temporary file, fsync, rename over ``path``, fsync of the directory."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash, or planted: a name, never a file to write through
    fd = _open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ------------------------------------------------------------------------------- replay helpers


class _Cursor(msgspec.Struct, kw_only=True):
    """The log's end as the records describe it: checked on replay, advanced on append."""

    offset: int = len(LOG_HEADER)
    records: int = 0
    pos: int = 0
    chars: int = 0
    consumed: int = 0
    doc_start: int = 0
    held: bytes = b""
    last: RecordRef | None = None
    """The last record (None: none yet, or unknown after an old snapshot)."""


class _TextTail:
    """Follows the text of replayed records to rebuild the incremental tokenizer's state at the end."""

    def __init__(self, start: TokenizerState | None) -> None:
        self.pieces: deque[tuple[int, str]] = deque()  # (absolute start, text)
        if start is None:
            self.consumed = self.doc_start = self.chars = 0
        else:
            self.consumed, self.doc_start = start.consumed, start.doc_start
            self.chars = start.consumed + len(start.pending)
            self.pieces.append((start.consumed - len(start.context), start.context + start.pending))

    def add(self, rec: StreamRecord) -> None:
        if rec.text:
            self.pieces.append((rec.chars - len(rec.text), rec.text))
        self.chars, self.consumed = rec.chars, rec.consumed
        if rec.flags & FLAG_END_DOC:
            self.doc_start = rec.consumed
        keep = max(self.doc_start, self.consumed - CONTEXT_CHARS)
        while self.pieces and self.pieces[0][0] + len(self.pieces[0][1]) <= keep:
            self.pieces.popleft()

    def state(self) -> TokenizerState:
        keep = max(self.doc_start, self.consumed - CONTEXT_CHARS)
        if not self.pieces:
            return TokenizerState(consumed=self.consumed, doc_start=self.doc_start, context="", pending="")
        start = self.pieces[0][0]
        text = "".join(t for _, t in self.pieces)
        lo = max(keep, start)
        return TokenizerState(
            consumed=self.consumed,
            doc_start=self.doc_start,
            context=text[lo - start : self.consumed - start],
            pending=text[self.consumed - start : self.chars - start],
        )


def _check_record(rec: StreamRecord, cur: _Cursor, layout: Layout) -> tuple[list[int], list[int]]:
    """Check ``rec`` follows ``cur``; return its ids and absolute token ends. Raises ValueError."""
    if rec.n != cur.records:
        raise ValueError(f"record number {rec.n}, expected {cur.records}")
    if rec.pos != cur.pos:
        raise ValueError(f"record {rec.n} starts at token {rec.pos}, the stream is at {cur.pos}")
    if rec.chars - len(rec.text) != cur.chars:
        raise ValueError(f"record {rec.n} continues text at character {rec.chars - len(rec.text)}, not {cur.chars}")
    if not cur.consumed <= rec.consumed <= rec.chars:
        raise ValueError(f"record {rec.n}: consumed {rec.consumed} is out of order")
    if rec.flags & FLAG_END_DOC and rec.consumed != rec.chars:
        raise ValueError(f"record {rec.n} ends a document with text pending")
    if len(rec.held) > 3:
        raise ValueError(f"record {rec.n}: {len(rec.held)} held bytes")
    mark = rec.input
    if mark is not None and (mark.at != rec.chars or mark.taken < 0 or rec.text or rec.ids):
        raise ValueError(f"record {rec.n}: an input mark out of step with the stream")
    ids = decode_ids(rec.ids, layout.id_bytes)
    if any(i >= layout.vocab_size for i in ids):
        raise ValueError(f"record {rec.n}: token id outside the vocabulary of {layout.vocab_size}")
    ends: list[int] = []
    if rec.ends:
        if len(rec.ends) != len(ids):
            raise ValueError(f"record {rec.n}: {len(rec.ends)} token ends for {len(ids)} ids")
        at = cur.consumed
        for delta in rec.ends:
            at += delta
            ends.append(at)
        if ends[-1] > rec.consumed or min(rec.ends) < 0:
            raise ValueError(f"record {rec.n}: token ends out of order")
    return ids, ends


def _advance(cur: _Cursor, rec: StreamRecord, n_ids: int, size: int, crc: int) -> None:
    cur.last = RecordRef(offset=cur.offset, crc=crc)
    cur.offset += size
    cur.records += 1
    cur.pos += n_ids
    cur.chars = rec.chars
    cur.consumed = rec.consumed
    if rec.flags & FLAG_END_DOC:
        cur.doc_start = rec.consumed
    cur.held = rec.held


def _iter_records(
    f: BinaryIO, size: int, cur: _Cursor, layout: Layout
) -> Iterator[tuple[StreamRecord, list[int], list[int], int, int]]:
    """Valid records from ``cur.offset`` on, with their ids, token ends, frame size and CRC. The caller
    advances ``cur`` past each before asking for the next (each is checked against it). At a
    torn or invalid record the generator returns (``StopIteration.value``) the reason; at a
    clean end, None."""
    f.seek(cur.offset)
    at = cur.offset
    while True:
        payload, reason = read_frame(f, RECORD_MAGIC, size - at)
        if payload is None:
            return reason  # type: ignore[return-value]
        try:
            rec = _record_decoder.decode(payload)
            ids, ends = _check_record(rec, cur, layout)
        except (msgspec.DecodeError, ValueError) as exc:
            return f"invalid record: {exc}"  # type: ignore[return-value]
        step = _FRAME.size + len(payload)
        at += step
        yield rec, ids, ends, step, zlib.crc32(payload)


def _frame_header(f: BinaryIO, offset: int) -> tuple[bytes, int, int] | None:
    """(magic, payload length, CRC-32) of the frame header at ``offset``; None past the end."""
    f.seek(offset)
    header = f.read(_FRAME.size)
    return _FRAME.unpack(header) if len(header) == _FRAME.size else None


def _load_snapshot(path: Path, layout: Layout, stream: str, log_path: Path, log_size: int) -> EngineSnapshot:
    """Read a snapshot and check it on its own and against the log (its first ``log_size``
    bytes); ValueError says why it cannot be used.

    Against the log: it must be this stream's (``stream_id``), the record it ends with must be
    framed in the log as it says (``last_record``: the header's CRC-32, ending at
    ``log_offset``), and the bytes at ``log_offset`` must be the start of a record that
    continues it, or a torn or corrupt record (the replay cuts that off), or the end of the log.
    """
    try:
        fd = _open_file(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            payload, reason = read_frame(f, SNAPSHOT_MAGIC, file_size)
    except (OSError, StateError) as exc:
        raise ValueError(f"unreadable: {exc}") from None
    if payload is None:
        raise ValueError(reason or "empty file")
    try:
        snap = _snapshot_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"undecodable: {exc}") from None
    if snap.version not in READABLE_VERSIONS:
        raise ValueError(f"format version {snap.version}")
    if snap.stream_id and snap.stream_id != stream:
        raise ValueError(f"it belongs to another stream (id {snap.stream_id}, this directory's is {stream})")
    if snap.log_offset > log_size:
        raise ValueError(f"covers {snap.log_offset} log bytes, the log holds {log_size}")
    _check_snapshot(snap, layout)
    last = snap.last_record
    if last is None and snap.log_offset == log_size:
        return snap
    try:
        fd = _open_file(log_path, os.O_RDONLY)
    except (OSError, StateError) as exc:
        raise ValueError(f"the log is unreadable: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        if last is not None:
            head = _frame_header(f, last.offset)
            if (
                head is None
                or head[0] != RECORD_MAGIC
                or head[2] != last.crc
                or (last.offset + _FRAME.size + head[1] != snap.log_offset)
            ):
                raise ValueError(
                    f"does not match the log: the record it ends with (at byte {last.offset}) is not there"
                )
        if snap.log_offset == log_size:
            return snap
        head = _frame_header(f, snap.log_offset)
        if head is not None and head[0] != RECORD_MAGIC:
            raise ValueError(f"does not match the log: no record starts at byte {snap.log_offset}")
        f.seek(snap.log_offset)
        payload, reason = read_frame(f, RECORD_MAGIC, log_size - snap.log_offset)
        if payload is not None:  # (a torn or corrupt record right there is cut off by the replay)
            cur = _Cursor(
                offset=snap.log_offset,
                records=snap.log_records,
                pos=snap.position,
                chars=snap.chars,
                consumed=snap.tokenizer.consumed,
                doc_start=snap.tokenizer.doc_start,
            )
            try:
                _check_record(_record_decoder.decode(payload), cur, layout)
            except (msgspec.DecodeError, ValueError) as exc:
                raise ValueError(f"does not match the log: {exc}") from None
    return snap


def _check_snapshot(snap: EngineSnapshot, lay: Layout) -> None:
    """Consistency and range checks of a decoded snapshot (ValueError says what is wrong)."""
    seg = lay.segmenter()
    seg.restore(snap.segmenter)
    if seg.position != snap.position:
        raise ValueError(f"segmenter at token {seg.position}, snapshot at {snap.position}")
    if (
        snap.log_offset < len(LOG_HEADER)
        or snap.log_records < 0
        or (snap.log_records == 0) != (snap.log_offset == len(LOG_HEADER))
    ):
        raise ValueError("bad log position")
    last = snap.last_record
    if last is not None and not (len(LOG_HEADER) <= last.offset < snap.log_offset and snap.log_records > 0):
        raise ValueError("bad position of its last record")
    tok = snap.tokenizer
    if not 0 <= tok.doc_start <= tok.consumed or tok.consumed + len(tok.pending) != snap.chars:
        raise ValueError("tokenizer state does not match the characters taken")
    if len(snap.held) > 3:
        raise ValueError("more than 3 held bytes")
    store = SegmentStore.from_snapshot(snap.store)
    vocab = lay.vocab_size
    segments = [e.segment for e in store] + [p.segment for p in snap.unscored]
    for s in segments:
        if s.seq >= seg.next_seq or s.end > snap.position:
            raise ValueError(f"segment {s.seq} lies beyond the stream position")
    token_lists: list[Sequence[int]] = [s.tokens for s in segments]
    token_lists += [snap.recent, snap.segmenter.pending]
    token_lists += [p.question for p in snap.unscored if p.question is not None]
    token_lists += snap.questions
    for tokens in token_lists:
        if tokens and (min(tokens) < 0 or max(tokens) >= vocab):
            raise ValueError(f"a token id lies outside the vocabulary of {vocab}")
    for e in store:
        if not 0 <= e.question_id <= len(snap.questions):
            raise ValueError(f"segment {e.segment.seq} refers to unknown question {e.question_id}")


# ------------------------------------------------------------------------------- the directory


class StateDir:
    """An open state directory, locked for this process: recovery, the log, snapshots.

    Use :meth:`open`, then :meth:`recover` (the snapshot to restore), then iterate
    :meth:`replay` (log records after it, applied by the caller), then :meth:`append` and
    :meth:`write_snapshot` as the engine works, and :meth:`close`.
    """

    def __init__(self, path: Path, meta: StateMeta, lock_fd: int, log_fd: int, fsync: Fsync, created: bool) -> None:
        self.path = path
        self.meta = meta
        self.layout = meta.layout
        self.stream_id = stream_id(meta)
        self.fsync_policy: Fsync = fsync
        self._lock_fd: int | None = lock_fd
        self._log_fd: int | None = log_fd
        self._cursor = _Cursor()
        self._synced = 0  # log bytes known to be on stable storage
        self._last_sync = time.monotonic()
        self._failed: BaseException | None = None
        self._snapshot_records = -1  # records covered by the newest snapshot written or restored
        self.last_snapshot = time.monotonic()
        self.scored_since_snapshot = 0
        self.report = RecoveryReport(state_dir=str(path), created=created)
        self._resume: tuple[TokenizerState, int, bytes] | None = None
        self._start: EngineSnapshot | None = None

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, layout: Layout, model: str, model_name: str, fsync: Fsync
    ) -> StateDir:
        """Open (creating if needed) and lock the state directory at ``path``.

        Raises StateError when the path is unusable, another engine holds the directory, or the
        state was written with another format, tokenizer or segment layout.
        """
        folder = check_state_dir(path)
        created = False
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock_fd = _open_file(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateError(f"state dir {folder}: cannot open: {exc}") from None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(lock_fd, 32, 0).decode("ascii", "replace").strip() or "?"
                raise StateError(
                    f"state dir {folder} is in use by another engine (pid {holder}); stop it or use another directory"
                ) from None
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            meta = read_meta(folder)
            if meta is None:
                meta = StateMeta(
                    kind=STATE_KIND,
                    version=FORMAT_VERSION,
                    created=time.time(),
                    library=__version__,
                    model=model,
                    model_name=model_name,
                    layout=layout,
                )
                write_atomic(folder / META_NAME, msgspec.json.format(msgspec.json.encode(meta)) + b"\n")
                created = True
            else:
                _check_layout(folder, meta.layout, layout)
            upgraded_from = meta.version if meta.version != FORMAT_VERSION else None
            if upgraded_from is not None:  # records written from now on are format 2's: say so first
                meta = msgspec.structs.replace(meta, version=FORMAT_VERSION)
                write_atomic(folder / META_NAME, msgspec.json.format(msgspec.json.encode(meta)) + b"\n")
            log_fd = _open_log(folder / LOG_NAME)
        except StateError:
            os.close(lock_fd)
            raise
        except OSError as exc:
            os.close(lock_fd)
            raise StateError(f"state dir {folder}: {exc}") from None
        state = cls(folder, meta, lock_fd, log_fd, fsync, created)
        state.report.model_changed = not created and meta.model_name != model_name
        state.report.upgraded_from = upgraded_from
        return state

    # -- recovery ---------------------------------------------------------------------

    def recover(self) -> EngineSnapshot | None:
        """Choose the newest usable snapshot (None: replay the whole log); set up :meth:`replay`."""
        started = time.perf_counter()
        for tmp in self.path.glob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                tmp.unlink()  # left by a crash while writing a snapshot
        size = os.fstat(self._fd).st_size
        chosen: EngineSnapshot | None = None
        for path in self._snapshots():
            try:
                snap = self._load_snapshot(path, size)
            except ValueError as exc:
                self.report.skipped_snapshots.append(f"{path.name}: {exc}")
                log.warning("state %s: snapshot %s not used: %s", self.path, path.name, exc)
                with contextlib.suppress(OSError):  # kept for inspection, never considered again
                    path.rename(path.with_name(path.name + ".unusable"))
                continue
            chosen = snap
            self.report.snapshot = path.name
            self.report.snapshot_records = snap.log_records
            break
        if chosen is not None:
            self._cursor = _Cursor(
                offset=chosen.log_offset,
                records=chosen.log_records,
                pos=chosen.position,
                chars=chosen.chars,
                consumed=chosen.tokenizer.consumed,
                doc_start=chosen.tokenizer.doc_start,
                held=chosen.held,
                last=chosen.last_record,
            )
            self._snapshot_records = chosen.log_records
        self._start = chosen
        self.report.seconds = time.perf_counter() - started
        return chosen

    def replay(self) -> Iterator[tuple[StreamRecord, list[int], list[int]]]:
        """Yield the log records after the recovered snapshot, checked, as (record, ids, token ends).

        The cursor moves past each record as it is yielded (the caller may read ahead in
        batches), so write no snapshot before the replay has ended. A torn or corrupt record ends
        the replay: it and everything after it are moved to ``segments.log.corrupt-<offset>-<time>``
        and cut off the log, and :attr:`report` says so. Afterwards :attr:`resume` holds the
        incremental tokenizer's state and the log is ready for :meth:`append`.
        """
        started = time.perf_counter()
        tail = _TextTail(self._start.tokenizer if self._start is not None else None)
        size = os.fstat(self._fd).st_size
        fd = _open_file(self.path / LOG_NAME, os.O_RDONLY)
        with os.fdopen(fd, "rb", buffering=1 << 20) as f:
            records = _iter_records(f, size, self._cursor, self.layout)
            while True:
                try:
                    rec, ids, ends, step, crc = next(records)
                except StopIteration as stop:
                    reason = stop.value
                    break
                _advance(self._cursor, rec, len(ids), step, crc)
                tail.add(rec)
                self.report.replayed_records += 1
                yield rec, ids, ends
        if reason is not None:
            self._drop_tail(self._cursor.offset, size, reason)
        os.fsync(self._fd)  # what was replayed may still sit only in the OS cache of a killed process
        self._synced = self._cursor.offset
        self._resume = (tail.state(), self._cursor.chars, self._cursor.held)
        self.report.tokens = self._cursor.pos
        self.report.chars = self._cursor.chars
        self.report.log_bytes = self._cursor.offset
        self.report.seconds += time.perf_counter() - started

    @property
    def resume(self) -> tuple[TokenizerState, int, bytes]:
        """After :meth:`replay`: the incremental tokenizer's state, the characters taken, held bytes."""
        if self._resume is None:
            raise RuntimeError("replay() has not run to its end")
        return self._resume

    def _snapshots(self) -> list[Path]:
        found = []
        for entry in self.path.iterdir():
            m = SNAPSHOT_RE.fullmatch(entry.name)
            if m:
                found.append((int(m.group(1)), entry))
        return [p for _, p in sorted(found, reverse=True)]

    def _load_snapshot(self, path: Path, log_size: int) -> EngineSnapshot:
        """Read and check a snapshot against the log; ValueError says why it cannot be used."""
        return _load_snapshot(path, self.layout, self.stream_id, self.path / LOG_NAME, log_size)

    def _drop_tail(self, offset: int, size: int, reason: str) -> None:
        """Move the log's bytes from ``offset`` to a side file and cut them off the log."""
        dropped = size - offset
        saved = self.path / f"{LOG_NAME}.corrupt-{offset}-{int(time.time())}"
        src_fd = _open_file(self.path / LOG_NAME, os.O_RDONLY)
        dst_fd = _open_file(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(src_fd, "rb") as src, os.fdopen(dst_fd, "wb") as dst:
            src.seek(offset)
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.ftruncate(self._fd, offset)
        os.fsync(self._fd)
        _fsync_dir(self.path)
        self.report.dropped_bytes = dropped
        self.report.dropped_at = offset
        self.report.dropped_reason = reason
        self.report.dropped_saved_to = saved.name
        log.warning(
            "state %s: cut off a torn or corrupt log tail (%s): %d bytes at offset %d, kept in %s",
            self.path,
            reason,
            dropped,
            offset,
            saved.name,
        )

    # -- appending --------------------------------------------------------------------

    @property
    def _fd(self) -> int:
        if self._log_fd is None:
            raise StateError(f"state dir {self.path} is closed")
        return self._log_fd

    @property
    def records(self) -> int:
        """Records in the log (replayed and appended)."""
        return self._cursor.records

    @property
    def log_size(self) -> int:
        return self._cursor.offset

    def check_writable(self) -> None:
        """Raise StateError if an earlier write failed: the engine then takes no more input."""
        if self._failed is not None:
            raise StateError(
                f"state dir {self.path}: the log could not be written ({self._failed}); "
                f"no more input is taken (nothing acknowledged was lost)"
            )

    def append(
        self,
        pos: int,
        ids: Sequence[int],
        ends: Sequence[int] = (),
        *,
        text: str = "",
        meta: dict[str, Any] | None = None,
        chars: int,
        consumed: int,
        end_doc: bool = False,
        cut: bool = False,
        held: bytes = b"",
        mark: InputMark | None = None,
    ) -> None:
        """Log one intake step (written to the OS before returning: it survives the process).

        ``ends`` are the absolute character ends of ids that came from text (empty for ids fed
        as ids). A step that changes nothing is not written. Raises StateError if the write
        fails; the log is then cut back to its last whole record and further appends refused.
        """
        self.check_writable()
        cur = self._cursor
        if pos != cur.pos:
            raise RuntimeError(f"log out of step: record at token {pos}, log at {cur.pos}")
        changed = consumed != cur.consumed or held != cur.held or (end_doc and cur.doc_start != consumed)
        if not (ids or text or cut or changed or mark):
            return
        deltas: list[int] = []
        if ends:
            prev = cur.consumed
            for e in ends:
                deltas.append(e - prev)
                prev = e
        flags = (FLAG_END_DOC if end_doc else 0) | (FLAG_CUT if cut else 0)
        rec = StreamRecord(
            n=cur.records,
            pos=pos,
            chars=chars,
            consumed=consumed,
            ids=encode_ids(ids, self.layout.id_bytes),
            ends=deltas,
            text=text,
            meta=meta,
            flags=flags,
            held=held,
            time=time.time(),
            input=mark,
        )
        payload = _record_encoder.encode(rec)
        data = frame(RECORD_MAGIC, payload)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._failed = exc
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, cur.offset)
            log.error("state %s: cannot write the log: %s", self.path, exc)
            self.check_writable()
        _advance(cur, rec, len(ids), len(data), zlib.crc32(payload))

    # -- durability -------------------------------------------------------------------

    def sync_due(self, now: float | None = None, interval: float = 1.0) -> bool:
        """Whether the log holds bytes not yet fsynced that the policy wants on disk now."""
        if self._synced >= self._cursor.offset or self._log_fd is None or self._failed is not None:
            return False
        if self.fsync_policy == "always":
            return True
        if self.fsync_policy == "interval":
            return (now if now is not None else time.monotonic()) - self._last_sync >= interval
        return False

    def sync(self) -> None:
        """fsync the log (blocking: call it from a worker thread). Safe to call concurrently."""
        upto = self._cursor.offset
        fd = self._log_fd
        if fd is None or self._synced >= upto:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:  # closed meanwhile: close() synced it
                return
            raise StateError(f"state dir {self.path}: cannot fsync the log: {exc}") from None
        self._synced = max(self._synced, upto)
        self._last_sync = time.monotonic()

    def snapshot_due(self, every_s: float, every_segments: int) -> bool:
        """Whether enough changed since the last snapshot to write another."""
        if self._failed is not None or self._log_fd is None:
            return False
        changed = self.scored_since_snapshot > 0 or self._cursor.records != self._snapshot_records
        if not changed:
            return False
        return self.scored_since_snapshot >= every_segments or time.monotonic() - self.last_snapshot >= every_s

    def write_snapshot(self, snap: EngineSnapshot) -> Path | None:
        """Write ``snap`` atomically (the log is fsynced first, so a snapshot never covers log
        bytes that could be lost) and keep the two newest. Blocking: call it from a worker
        thread. Returns the file, or None when the state can take no more writes."""
        if self._failed is not None or self._log_fd is None:
            return None
        self.sync_upto(snap.log_offset)
        name = self.path / f"snapshot-{snap.log_records:016d}.bin"
        write_atomic(name, frame(SNAPSHOT_MAGIC, msgspec.msgpack.encode(snap)))
        self._snapshot_records = snap.log_records
        self.last_snapshot = time.monotonic()
        for old in self._snapshots()[KEEP_SNAPSHOTS:]:
            with contextlib.suppress(OSError):
                old.unlink()
        return name

    def sync_upto(self, offset: int) -> None:
        """fsync the log if ``offset`` bytes of it may not be on disk yet."""
        fd = self._log_fd
        if fd is not None and self._synced < offset:
            os.fsync(fd)
            self._synced = max(self._synced, offset)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """fsync and close the log and release the lock."""
        fd, self._log_fd = self._log_fd, None
        if fd is not None:
            try:
                if self._failed is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
        lock, self._lock_fd = self._lock_fd, None
        if lock is not None:
            os.close(lock)  # releases the flock

    def snapshot_cursor(self) -> tuple[int, int, RecordRef | None]:
        """(log bytes, log records, the last record) a snapshot taken now covers."""
        return self._cursor.offset, self._cursor.records, self._cursor.last


def _open_log(path: Path) -> int:
    """Open the log for appending, writing its header if it is new."""
    fd = _open_file(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, len(LOG_HEADER), 0)
        if size < len(LOG_HEADER) and LOG_HEADER.startswith(head):
            os.ftruncate(fd, 0)  # new, or its header write was cut short
            _write_all(fd, LOG_HEADER)
            os.fsync(fd)
            _fsync_dir(path.parent)
        elif head != LOG_HEADER:
            raise StateError(f"{path} is not an xl3m-stream log (header {head!r})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_layout(folder: Path, stored: Layout, current: Layout) -> None:
    if stored.tokenizer_sha256 != current.tokenizer_sha256 or stored.vocab_size != current.vocab_size:
        raise StateError(
            f"state dir {folder} was written with another tokenizer (vocabulary of {stored.vocab_size}); "
            f"its token ids mean nothing to this model's tokenizer ({current.vocab_size}): use its model or another "
            f"directory"
        )
    fields = ("segment_tokens", "segment_overlap", "segment_cut")
    diff = [f for f in fields if getattr(stored, f) != getattr(current, f)]
    if diff or stored.boundary_ids != current.boundary_ids:
        was = ", ".join(f"{f}={getattr(stored, f)!r}" for f in fields)
        now = ", ".join(f"{f}={getattr(current, f)!r}" for f in fields)
        raise StateError(
            f"state dir {folder} was cut into segments with {was}; this engine uses {now}: "
            f"use the same settings or another directory"
        )


# ------------------------------------------------------------------------------- read-only access


def tokenizer_fingerprint(vocab: dict[str, int]) -> str:
    """SHA-256 of a vocabulary (token -> id), independent of dict order."""
    import hashlib

    items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


class LogReader:
    """Replays a state directory's log from its start, without a model or the lock: token ids,
    the segments cut from them (with source metadata, exactly as the engine cut them), and the
    text not yet tokenised. Safe while an engine appends: a record being written is seen as a
    torn tail and left alone (``torn`` says so).

    Iterate :meth:`segments` (streaming, bounded memory) or call :func:`read_stream`.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_ids: bool = False, upto_records: int | None = None):
        meta = read_meta(path)
        if meta is None:
            raise StateError(f"state dir {path} holds no state")
        self.folder = check_state_dir(path)
        self.layout = lay = meta.layout
        self._segmenter = lay.segmenter()
        self._index = MetaIndex()
        self._upto = upto_records
        self.ids: list[int] | None = [] if keep_ids else None
        self.cursor = _Cursor()
        self.tail = _TextTail(None)
        self.torn: str | None = None

    def _cut(self, new: list[Segment]) -> list[Segment]:
        out = []
        for s in new:
            m = self._index.meta_for(s.start, s.end)
            out.append(msgspec.structs.replace(s, meta=m) if m is not None else s)
        self._index.forget_before(self._segmenter.position - len(self._segmenter.pending))
        return out

    def segments(self) -> Iterator[Segment]:
        """The segments cut from the log's records (up to ``upto_records``), in order."""
        cur = self.cursor
        try:
            fd = _open_file(self.folder / LOG_NAME, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb", buffering=1 << 20) as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(len(LOG_HEADER)) != LOG_HEADER:
                raise StateError(f"{self.folder / LOG_NAME} is not an xl3m-stream log")
            records = _iter_records(f, size, cur, self.layout)
            while self._upto is None or cur.records < self._upto:
                try:
                    rec, ids, ends, step, crc = next(records)
                except StopIteration as stop:
                    self.torn = stop.value
                    return
                _advance(cur, rec, len(ids), step, crc)
                self.tail.add(rec)
                if rec.text:
                    self._index.add_chunk(rec.chars, rec.meta)
                if ends:
                    self._index.add_tokens(ends)
                elif ids:
                    self._index.add_unattributed(len(ids))
                if self.ids is not None:
                    self.ids.extend(ids)
                yield from self._cut(self._segmenter.push(ids))
                if rec.flags & FLAG_CUT:
                    yield from self._cut(self._segmenter.flush())


def read_stream(path: str | os.PathLike[str]) -> StreamContents:
    """Read the whole stream held in a state directory (see :class:`LogReader`): for tests,
    audits and tools. Holds every token id in memory; iterate ``LogReader.segments`` for big logs."""
    reader = LogReader(path, keep_ids=True)
    segments = list(reader.segments())
    assert reader.ids is not None
    return StreamContents(
        ids=reader.ids,
        pending_text=reader.tail.state().pending,
        chars=reader.cursor.chars,
        segments=segments,
        records=reader.cursor.records,
        torn=reader.torn,
    )


def read_snapshot(path: str | os.PathLike[str]) -> EngineSnapshot | None:
    """The newest snapshot of a state directory that passes its checks, or None; read-only,
    without a model or the lock (for tests, audits and tools)."""
    meta = read_meta(path)
    if meta is None:
        return None
    folder = check_state_dir(path)
    try:
        log_size = os.lstat(folder / LOG_NAME).st_size
    except FileNotFoundError:
        log_size = len(LOG_HEADER)
    found = sorted((p for p in folder.iterdir() if SNAPSHOT_RE.fullmatch(p.name)), reverse=True)
    for snap_path in found:
        try:
            return _load_snapshot(snap_path, meta.layout, stream_id(meta), folder / LOG_NAME, log_size)
        except ValueError:
            continue
    return None
