"""Files, stdin and ``tail -F`` for :mod:`xl3m_stream.sources`: byte, text and line readers
and :func:`follow`."""

from __future__ import annotations

import math
import os
import stat as stat_mod
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio

from ..errors import InputError
from .decode import DecodeStats, TextChunk, Utf8Decoder, _LineSplitter

DEFAULT_CHUNK_SIZE = 1 << 16
"""Bytes per read."""
DEFAULT_MAX_LINE_CHARS = 1 << 20
"""Longest line (without its newline) yielded whole; longer ones are cut into pieces."""

PathArg = str | os.PathLike[str]


class SourceNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist (both an :class:`InputError` and a ``FileNotFoundError``)."""


class SourceIsADirectoryError(InputError, IsADirectoryError):
    """An input path is a directory (both an :class:`InputError` and an ``IsADirectoryError``)."""


# --------------------------------------------------------------------------------------
# files and stdin


def _check_path(path: PathArg) -> str:
    """``path`` as a str, if it names something readable that is not a directory."""
    name = os.fspath(path)
    if not isinstance(name, str):
        raise TypeError(f"path must be a str or os.PathLike[str], got {type(path).__name__}")
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise SourceNotFoundError(f"input file not found: {name!r}") from None
    if stat_mod.S_ISDIR(st.st_mode):
        raise SourceIsADirectoryError(f"input path is a directory, not a file: {name!r}")
    return name


async def read_bytes_chunks(path: PathArg, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Yield the bytes of ``path`` (``"-"``: standard input) in pieces of at most ``chunk_size``.

    Each read returns what is available (``read1``), so a slow pipe streams as it is
    written. A missing path raises :class:`SourceNotFoundError` (a ``FileNotFoundError``),
    a directory :class:`SourceIsADirectoryError` (an ``IsADirectoryError``). Reads run in
    worker threads; a blocked read of standard input is abandoned on cancellation.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if isinstance(path, str) and path == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise InputError("standard input is not available as a binary stream")
        read = getattr(stdin, "read1", None) or stdin.read
        while True:
            data = await anyio.to_thread.run_sync(read, chunk_size, abandon_on_cancel=True)
            if not data:
                return
            yield bytes(data)
    name = _check_path(path)
    f = await anyio.open_file(name, "rb")
    try:
        while True:
            data = await f.read1(chunk_size)
            if not data:
                return
            yield data
    finally:
        f.wrapped.close()  # synchronous: also works in a cancelled scope or a finalizer


async def read_text(
    path: PathArg, *, chunk_size: int = DEFAULT_CHUNK_SIZE, stats: DecodeStats | None = None
) -> AsyncIterator[TextChunk]:
    """Yield the decoded text of ``path`` (``"-"``: stdin) in chunks, not split into lines.

    Chunks carry no ``meta``. See :class:`Utf8Decoder` for how bad bytes are handled.
    """
    decoder = Utf8Decoder(stats)
    async with aclosing(read_bytes_chunks(path, chunk_size=chunk_size)) as chunks:
        async for data in chunks:
            text = decoder.decode(data)
            if text:
                yield TextChunk(text=text)
    text = decoder.final()
    if text:
        yield TextChunk(text=text)


async def read_lines(
    path: PathArg,
    *,
    stats: DecodeStats | None = None,
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> AsyncIterator[TextChunk]:
    """Yield one chunk per line of ``path`` (``"-"``: stdin), with its ``"\\n"``.

    ``meta`` is ``{"line": n}`` (1-based). The last line is yielded even without a
    newline. Lines are split on ``"\\n"`` only (a ``"\\r\\n"`` ending stays in the text).
    A line longer than ``max_line_chars`` (not counting the newline) comes as pieces of
    ``max_line_chars`` characters with ``meta {"line": n, "part": k}`` (k from 1), counted
    in ``stats.split_lines``.
    """
    stats = stats if stats is not None else DecodeStats()
    decoder = Utf8Decoder(stats)
    splitter = _LineSplitter(max_line_chars, stats)
    async with aclosing(read_bytes_chunks(path, chunk_size=chunk_size)) as chunks:
        async for data in chunks:
            for chunk in splitter.feed(decoder.decode(data)):
                yield chunk
    for chunk in splitter.feed(decoder.final()) + splitter.flush():
        yield chunk


# --------------------------------------------------------------------------------------
# follow (tail -F)


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _probe(fd: int, path: str) -> tuple[int, os.stat_result | None]:
    """(size of the open file, stat of whatever ``path`` names now or None)."""
    return os.fstat(fd).st_size, _stat_or_none(path)


async def _wait(seconds: float, stop: anyio.Event | None) -> None:
    if stop is None:
        await anyio.sleep(seconds)
    else:
        with anyio.move_on_after(seconds):
            await stop.wait()


async def follow(
    path: PathArg,
    *,
    poll_interval: float = 0.25,
    from_start: bool = True,
    stats: DecodeStats | None = None,
    stop: anyio.Event | None = None,
    idle_timeout: float | None = None,
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> AsyncIterator[TextChunk]:
    """Follow ``path`` like ``tail -F``: yield each line as it is appended.

    One chunk per complete line (with its ``"\\n"``; long lines are cut as in
    :func:`read_lines`). A partial last line is held until its newline arrives, or until
    the file is truncated or rotated or following ends; then it is yielded as it is.
    ``meta["line"]`` numbers the lines this call yields (1-based, continuing across
    truncations and rotations), not the lines of the file.

    - Missing at the start: waits for the file to appear (then reads it from its start).
    - ``from_start=False``: a file that exists at the start is read from its end.
    - Truncation (the file got shorter than what was read): read again from its start.
    - Rotation (``path`` now names another file, or vanished and came back): the old
      file is read to its end, then the new one from its start. While ``path`` is
      missing the old file keeps being followed.

    Truncations and rotations are counted in ``stats.truncations``. A truncation followed
    by a rewrite past the old size within one poll is not detected (``tail`` has the same
    limit). Polls with ``os.stat`` every ``poll_interval`` seconds while there is no new
    data. Ends when ``stop`` is set or after ``idle_timeout`` seconds without new data;
    with neither it runs until cancelled.
    """
    if not poll_interval > 0 or not math.isfinite(poll_interval):  # (NaN compares false)
        raise ValueError(f"poll_interval must be a finite number > 0, got {poll_interval}")
    if idle_timeout is not None and (not idle_timeout >= 0 or not math.isfinite(idle_timeout)):
        raise ValueError(f"idle_timeout must be a finite number >= 0 or None, got {idle_timeout}")
    name = os.fspath(path)
    if not isinstance(name, str):
        raise TypeError(f"path must be a str or os.PathLike[str], got {type(path).__name__}")
    if name == "-":
        raise InputError("follow() needs a file path; read standard input with read_lines('-')")
    stats = stats if stats is not None else DecodeStats()
    decoder = Utf8Decoder(stats)
    splitter = _LineSplitter(max_line_chars, stats)
    f: anyio.AsyncFile[bytes] | None = None
    identity: tuple[int, int] | None = None
    position = 0
    seek_to_end = not from_start
    last_data = anyio.current_time()

    async def read_chunk() -> list[TextChunk] | None:
        """Read once from the open file: the lines completed, or None at its end."""
        nonlocal position, last_data
        assert f is not None
        data = await f.read1(chunk_size)
        if not data:
            return None
        position += len(data)
        last_data = anyio.current_time()
        return splitter.feed(decoder.decode(data))

    def end_of_file() -> list[TextChunk]:
        """The open file is done with (truncated or rotated): flush what it left."""
        return splitter.feed(decoder.final()) + splitter.flush()

    try:
        while not (stop is not None and stop.is_set()):
            if f is None:
                st = await anyio.to_thread.run_sync(_stat_or_none, name)
                if st is not None:
                    if stat_mod.S_ISDIR(st.st_mode):
                        raise SourceIsADirectoryError(f"input path is a directory, not a file: {name!r}")
                    try:
                        f = await anyio.open_file(name, "rb")
                    except FileNotFoundError:
                        f = None  # vanished between stat and open: wait for it again
                    else:
                        fst = os.fstat(f.wrapped.fileno())
                        identity = (fst.st_dev, fst.st_ino)
                        position = await f.seek(0, os.SEEK_END) if seek_to_end else 0
                seek_to_end = False  # a file that appears later is new: read it all
            if f is not None:
                lines = await read_chunk()
                if lines is not None:  # more may follow at once: read again before waiting
                    for chunk in lines:
                        yield chunk
                    continue
                size, st = await anyio.to_thread.run_sync(_probe, f.wrapped.fileno(), name)
                if size < position:  # truncated in place
                    for chunk in end_of_file():
                        yield chunk
                    position = await f.seek(0)
                    stats.truncations += 1
                    continue
                if st is not None and (st.st_dev, st.st_ino) != identity:  # rotated
                    while (lines := await read_chunk()) is not None:  # written before the switch
                        for chunk in lines:
                            yield chunk
                    for chunk in end_of_file():
                        yield chunk
                    f.wrapped.close()
                    f = None
                    stats.truncations += 1
                    continue
            wait = poll_interval
            if idle_timeout is not None:
                left = idle_timeout - (anyio.current_time() - last_data)
                if left <= 0:
                    break
                wait = min(wait, left)
            await _wait(wait, stop)
        for chunk in end_of_file():
            yield chunk
    finally:
        if f is not None:
            f.wrapped.close()
