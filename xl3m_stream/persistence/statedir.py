"""The engine's open state directory (:class:`StateDir`): opening and locking it (creating
``meta.json`` and the log), recovery (choosing a snapshot, replaying the log after it, cutting
off a torn tail), appending records, the fsync policy, snapshots, closing. Synchronous: the
engine calls it off the event loop where it may block."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from .._version import __version__
from ..errors import StateError
from ..tokenizer import TokenizerState
from .files import _fsync_dir, _open_file, _open_log, _write_all, check_state_dir, read_meta, stream_id, write_atomic
from .format import (
    FLAG_CUT,
    FLAG_END_DOC,
    FORMAT_VERSION,
    KEEP_SNAPSHOTS,
    LOCK_NAME,
    LOG_NAME,
    MAX_WATCHES_BYTES,
    META_NAME,
    RECORD_MAGIC,
    SNAPSHOT_MAGIC,
    SNAPSHOT_RE,
    STATE_KIND,
    TMP_PREFIX,
    WATCHES_NAME,
    EngineSnapshot,
    Fsync,
    InputMark,
    Layout,
    RecordRef,
    RecoveryReport,
    StateMeta,
    StreamRecord,
    _record_encoder,
    encode_ids,
    frame,
)
from .records import _advance, _Cursor, _iter_records, _load_snapshot, _TextTail

log = logging.getLogger("xl3m_stream.persistence")


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

    def write_watches(self, data: bytes) -> None:
        """Replace the saved standing questions with ``data`` (atomic: old or new, never a mix)."""
        write_atomic(self.path / WATCHES_NAME, data)

    def read_watches(self) -> bytes | None:
        """The saved standing questions, or None when none were saved."""
        try:
            fd = _open_file(self.path / WATCHES_NAME, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_WATCHES_BYTES + 1)
        if len(data) > MAX_WATCHES_BYTES:
            raise StateError(f"{self.path / WATCHES_NAME} is over {MAX_WATCHES_BYTES} bytes: refused")
        return data

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

    def note_scored(self, n: int, every_segments: int) -> bool:
        """``n`` more segments scored since the last snapshot's capture; True when that makes a
        snapshot due by count."""
        self.scored_since_snapshot += n
        return self.scored_since_snapshot >= every_segments

    def note_captured(self) -> None:
        """A snapshot's state was captured: the scored count starts again."""
        self.scored_since_snapshot = 0

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
