"""The on-disk format of a state directory: its constants, the msgspec Structs that are written
(``meta.json``, log records, snapshots) or reported, the framing and the token-id encoding.

Layout of a state directory::

    meta.json               format version, model, tokenizer fingerprint, segment layout
    lock                    flock()ed by the engine that uses the directory (holds its pid)
    segments.log            header b"XL3MLOG\\x01", then framed records (StreamRecord)
    snapshot-<records>.bin  one framed EngineSnapshot each; the two newest are kept
    segments.log.corrupt-*  a torn or corrupt log tail moved aside at recovery (kept for you)
    watches.json            the standing questions (JSON), rewritten atomically on each change

Framing (log records and snapshots alike)::

    magic (4 bytes) | payload length (u32 LE) | CRC-32 of payload (u32 LE) | payload (msgpack)

Nothing is ever unpickled: payloads decode into typed msgspec Structs, which reject any
value of the wrong type, and every record and snapshot is checked for consistency before use
(:mod:`.records`). Changing anything here changes the format: see ``FORMAT_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from typing import Any, BinaryIO, Literal

import msgspec

from ..relevance import LexicalState
from ..segment import Segment
from ..segmenter import MetaIndexState, Segmenter, SegmenterState
from ..sources import DecodeStats
from ..store import StoreSnapshot
from ..tokenizer import TokenizerState

Fsync = Literal["always", "interval", "never"]

FORMAT_VERSION = 2
"""Written into meta.json and snapshots. 2: log records may carry an input mark (``StreamRecord.input``)."""
READABLE_VERSIONS = (1, 2)
"""Formats this version reads; a format-1 directory is marked format 2 when an engine opens it."""
STATE_KIND = "xl3m-stream-state"
META_NAME = "meta.json"
LOCK_NAME = "lock"
LOG_NAME = "segments.log"
WATCHES_NAME = "watches.json"
"""The standing questions (JSON), rewritten atomically whenever one is added or removed."""
MAX_WATCHES_BYTES = 1 << 20
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


def tokenizer_fingerprint(vocab: dict[str, int]) -> str:
    """SHA-256 of a vocabulary (token -> id), independent of dict order."""
    items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()
