"""Read-only access to a state directory, without a model or the lock (tests, audits, tools):
:class:`LogReader` replays the log into token ids and segments exactly as the engine cut them;
:func:`read_stream` and :func:`read_snapshot` read the whole stream and the newest usable
snapshot."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..errors import StateError
from ..segment import Segment
from ..segmenter import Cutter
from .files import _open_file, check_state_dir, read_meta, stream_id
from .format import FLAG_CUT, LOG_HEADER, LOG_NAME, SNAPSHOT_RE, EngineSnapshot, StreamContents
from .records import _advance, _Cursor, _iter_records, _load_snapshot, _TextTail


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
        self._cutter = Cutter(lay.segmenter())  # the engine's own path from ids to segments
        self._upto = upto_records
        self.ids: list[int] | None = [] if keep_ids else None
        self.cursor = _Cursor()
        self.tail = _TextTail(None)
        self.torn: str | None = None

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
                if self.ids is not None:
                    self.ids.extend(ids)
                chunk = (rec.chars, rec.meta) if rec.text else None
                yield from self._cutter.apply(ids, ends, chunk=chunk, cut=bool(rec.flags & FLAG_CUT))


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
