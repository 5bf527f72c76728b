"""Checking and iterating what the files hold: the log's cursor (:class:`_Cursor`), the text
tail that rebuilds the incremental tokenizer's state (:class:`_TextTail`), each log record
checked against the ones before it (:func:`_check_record`, :func:`_advance`,
:func:`_iter_records`), and snapshots loaded and checked on their own and against the log
(:func:`_load_snapshot`). Shared by the engine's :class:`.StateDir` and the read-only
:mod:`.reader`."""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec

from ..errors import StateError
from ..store import SegmentStore
from ..tokenizer import CONTEXT_CHARS, TokenizerState
from .files import _open_file
from .format import (
    _FRAME,
    FLAG_END_DOC,
    LOG_HEADER,
    READABLE_VERSIONS,
    RECORD_MAGIC,
    SNAPSHOT_MAGIC,
    EngineSnapshot,
    Layout,
    RecordRef,
    StreamRecord,
    _record_decoder,
    _snapshot_decoder,
    decode_ids,
    read_frame,
)


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
