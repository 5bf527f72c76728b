"""The files of a state directory: checking a path (:func:`check_state_dir`), reading
``meta.json`` (:func:`read_meta`) and the stream's identity derived from it (:func:`stream_id`),
opening a file safely (regular files only, no symlinks, no hard links written through, no
FIFO blocking), opening the log for appending (its header written if new), fsync of a
directory, and atomic writes (:func:`write_atomic`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

import msgspec

from ..errors import StateError
from .format import LOCK_NAME, LOG_HEADER, META_NAME, READABLE_VERSIONS, STATE_KIND, TMP_PREFIX, StateMeta


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
