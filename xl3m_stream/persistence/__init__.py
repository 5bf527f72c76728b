"""Durable engine state: an append-only stream log and atomic snapshots in a state directory.

The engine (``EngineConfig.state_dir``) writes everything it takes into the stream to an
append-only log *before* ``feed`` returns, and now and then a snapshot of its scored state.
An engine started on the same directory loads the newest usable snapshot and replays the log
records written after it, so nothing acknowledged is lost across a crash. This package owns
the on-disk format and its checks; it is synchronous and knows nothing of models or of the
event loop (the engine calls it, off the loop where it may block). See docs/RELIABILITY.md.

Modules, each importing only those above it:

- :mod:`.format`: the format (layout of a directory, framing, constants, the Structs written)
- :mod:`.files`: the path check, ``meta.json``, safe opening of its files, atomic writes
- :mod:`.records`: log records and snapshots checked and iterated (shared by the two below)
- :mod:`.statedir`: :class:`StateDir`, the engine's open, locked directory
- :mod:`.reader`: read-only access (:class:`LogReader`, :func:`read_stream`, :func:`read_snapshot`)

Every name used outside the package is importable from here.
"""

from __future__ import annotations

from .files import check_state_dir, read_meta, stream_id, write_atomic
from .format import (
    FLAG_CUT,
    FLAG_END_DOC,
    FORMAT_VERSION,
    KEEP_SNAPSHOTS,
    LOCK_NAME,
    LOG_HEADER,
    LOG_NAME,
    MAX_RECORD_BYTES,
    META_NAME,
    READABLE_VERSIONS,
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
    PendingSegment,
    RecordRef,
    RecoveryReport,
    StateMeta,
    StreamContents,
    StreamRecord,
    decode_ids,
    encode_ids,
    frame,
    read_frame,
    tokenizer_fingerprint,
)
from .reader import LogReader, read_snapshot, read_stream
from .statedir import StateDir

__all__ = [
    "FLAG_CUT",
    "FLAG_END_DOC",
    "FORMAT_VERSION",
    "KEEP_SNAPSHOTS",
    "LOCK_NAME",
    "LOG_HEADER",
    "LOG_NAME",
    "MAX_RECORD_BYTES",
    "META_NAME",
    "READABLE_VERSIONS",
    "RECORD_MAGIC",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_RE",
    "STATE_KIND",
    "TMP_PREFIX",
    "WATCHES_NAME",
    "EngineSnapshot",
    "Fsync",
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
    "decode_ids",
    "encode_ids",
    "frame",
    "read_frame",
    "read_meta",
    "read_snapshot",
    "read_stream",
    "stream_id",
    "tokenizer_fingerprint",
    "write_atomic",
]
