"""Sources: adapters that turn files, pipes, log tails, JSON logs and chats into text chunks.

Every adapter is an async generator of :class:`TextChunk` (or of ``bytes`` for
:func:`read_bytes_chunks`), built on ``anyio`` only, so it runs under asyncio and trio.
They compose::

    async with aclosing(jsonl_records(follow("app.log", stop=stop))) as records:
        async for chunk in records:
            await engine.feed(chunk)

Decoding never fails: invalid UTF-8 becomes U+FFFD and NUL bytes are dropped, both counted
in a :class:`DecodeStats` the caller may pass in and read afterwards (the CLI reports it).
Lines longer than ``max_line_chars`` are cut into pieces, so a 10 MB line without a newline
streams in bounded memory.

Close a generator you stop early with ``contextlib.aclosing`` (as above): its file is then
closed at once rather than when the generator is garbage-collected.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import re
import stat as stat_mod
import string
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any

import anyio
import msgspec

from .errors import InputError

__all__ = [
    "DecodeStats",
    "SourceIsADirectoryError",
    "SourceNotFoundError",
    "TextChunk",
    "Utf8Decoder",
    "chat_turns",
    "follow",
    "iterate",
    "jsonl_records",
    "nesting_depth",
    "parse_log_line",
    "read_bytes_chunks",
    "read_lines",
    "read_text",
]

logger = logging.getLogger("xl3m_stream.sources")

DEFAULT_CHUNK_SIZE = 1 << 16
"""Bytes per read."""
DEFAULT_MAX_LINE_CHARS = 1 << 20
"""Longest line (without its newline) yielded whole; longer ones are cut into pieces."""
DEFAULT_LOG_TEMPLATE = "{ts} {level} {service} {message}\n"
"""How :func:`jsonl_records` renders a record for the model."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a JSON-lines record or in a
:class:`TextChunk`'s ``meta`` (real log records nest a few levels; a deeper one is hostile)."""

PathArg = str | os.PathLike[str]


# --------------------------------------------------------------------------------------
# records


class TextChunk(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of stream text and what its source knows about it.

    ``meta`` is JSON-compatible, e.g. ``{"line": 12, "ts": "2024-05-01T12:00:00Z",
    "level": "ERROR", "service": "api"}`` for a log line or ``{"role": "user", "turn": 3}``
    for a chat turn.
    """

    text: str
    meta: dict[str, Any] | None = None


class DecodeStats(msgspec.Struct, kw_only=True):
    """Mutable counters of what decoding and reading did to the input (reported by the CLI)."""

    bytes_read: int = 0
    """Bytes given to a :class:`Utf8Decoder`."""
    replaced: int = 0
    """Invalid UTF-8 sequences replaced by U+FFFD."""
    nul_removed: int = 0
    """NUL bytes dropped."""
    lines: int = 0
    """Lines yielded (a line cut into pieces counts once)."""
    split_lines: int = 0
    """Lines longer than ``max_line_chars``, yielded as several pieces."""
    skipped_records: int = 0
    """Malformed JSON lines skipped by :func:`jsonl_records`."""
    truncations: int = 0
    """:func:`follow`: file truncated or rotated, and read again from its start."""


class SourceNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist (both an :class:`InputError` and a ``FileNotFoundError``)."""


class SourceIsADirectoryError(InputError, IsADirectoryError):
    """An input path is a directory (both an :class:`InputError` and an ``IsADirectoryError``)."""


# --------------------------------------------------------------------------------------
# decoding

_COUNTING_REPLACE = "xl3m_stream.counting_replace"
_replacements = threading.local()


def _counting_replace(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: exactly ``errors="replace"`` for decoding, and counts each call.

    The count lives in a thread-local, read back by :meth:`Utf8Decoder._decode` right
    after its (synchronous) codec call, so decoders in different threads do not mix counts.
    """
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _replacements.count = getattr(_replacements, "count", 0) + 1
    return "\ufffd", exc.end


codecs.register_error(_COUNTING_REPLACE, _counting_replace)


class Utf8Decoder:
    """Incremental UTF-8 decoder that never fails.

    Invalid sequences become U+FFFD (the same output as ``bytes.decode("utf-8", "replace")``)
    and NUL characters are removed; both are counted in :attr:`stats`, as are the bytes given.
    A multibyte character split across two inputs is held back and decoded whole; call
    :meth:`final` at the end of the input to flush an incomplete trailing sequence (it
    becomes U+FFFD).
    """

    def __init__(self, stats: DecodeStats | None = None) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=_COUNTING_REPLACE)

    def decode(self, data: bytes | bytearray | memoryview) -> str:
        """Decode the next piece of input; may return ``""`` while a character is incomplete."""
        self.stats.bytes_read += len(data)
        return self._decode(bytes(data), final=False)

    def final(self) -> str:
        """Flush the end of the input and reset the decoder, ready for a new input."""
        return self._decode(b"", final=True)

    def reset(self) -> None:
        """Drop any held-back incomplete sequence without decoding it."""
        self._decoder.reset()

    @property
    def held(self) -> bytes:
        """The bytes of an incomplete character held back for the next input (at most 3)."""
        return bytes(self._decoder.getstate()[0])

    def restore(self, held: bytes) -> None:
        """Hold ``held`` back as the start of the next input (what :attr:`held` returned earlier)."""
        if not isinstance(held, (bytes, bytearray)) or len(held) > 3:
            raise ValueError(f"held bytes must be bytes of length <= 3, got {held!r}")
        self._decoder.reset()
        if held:
            self._decoder.setstate((bytes(held), 0))

    def _decode(self, data: bytes, *, final: bool) -> str:
        before = getattr(_replacements, "count", 0)
        text = self._decoder.decode(data, final)
        self.stats.replaced += getattr(_replacements, "count", 0) - before
        nuls = text.count("\0")
        if nuls:
            self.stats.nul_removed += nuls
            text = text.replace("\0", "")
        return text


class _LineSplitter:
    """Cuts decoded text into line chunks (each with its ``"\\n"``), in bounded memory.

    A line whose text (without the newline) is longer than ``max_line_chars`` is yielded
    as pieces of ``max_line_chars`` characters (the last one with the newline), each with
    ``meta["part"]`` (1-based) besides ``meta["line"]``.
    """

    def __init__(self, max_line_chars: int, stats: DecodeStats) -> None:
        if max_line_chars < 1:
            raise ValueError(f"max_line_chars must be >= 1, got {max_line_chars}")
        self._max = max_line_chars
        self._stats = stats
        self._parts: list[str] = []
        self._len = 0
        self._line = 0  # number of the current (or last finished) line
        self._pieces = 0  # pieces of the current line already yielded
        self._open = False  # the current line has started

    def feed(self, text: str) -> list[TextChunk]:
        """Take more text; return the chunks it completes."""
        out: list[TextChunk] = []
        *complete, rest = text.split("\n")
        for segment in complete:
            self._append(segment, out)
            self._end_line("\n", out)
        self._append(rest, out)
        return out

    def flush(self) -> list[TextChunk]:
        """End of input: return the unterminated last line, if any."""
        out: list[TextChunk] = []
        if self._open:
            self._end_line("", out)
        return out

    def _start(self) -> None:
        if not self._open:
            self._open = True
            self._line += 1
            self._pieces = 0

    def _append(self, text: str, out: list[TextChunk]) -> None:
        if not text:
            return
        self._start()
        self._parts.append(text)
        self._len += len(text)
        if self._len > self._max:
            joined = "".join(self._parts)
            start = 0
            while len(joined) - start > self._max:
                self._emit_piece(joined[start : start + self._max], out)
                start += self._max
            rest = joined[start:]
            self._parts = [rest]
            self._len = len(rest)

    def _emit_piece(self, text: str, out: list[TextChunk]) -> None:
        if self._pieces == 0:
            self._stats.split_lines += 1
        self._pieces += 1
        out.append(TextChunk(text=text, meta={"line": self._line, "part": self._pieces}))

    def _end_line(self, terminator: str, out: list[TextChunk]) -> None:
        self._start()
        text = "".join(self._parts) + terminator
        if self._pieces:
            if text:
                self._emit_piece(text, out)
        else:
            out.append(TextChunk(text=text, meta={"line": self._line}))
        self._stats.lines += 1
        self._parts = []
        self._len = 0
        self._open = False


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


# --------------------------------------------------------------------------------------
# JSON logs

_TS_KEYS = ("ts", "timestamp", "time", "@timestamp")
_LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "log.level")
_SERVICE_KEYS = ("service", "service.name", "app", "component", "logger")


_INT_RANGE = (-(1 << 63), (1 << 64) - 1)
"""Integers a state directory's log (msgpack) can hold."""


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply dicts, lists and tuples nest in ``value`` (a scalar: 0, ``[1]``: 1).

    Counted without recursion, so any depth (or a reference cycle) is safe; counting stops
    once the depth exceeds ``limit`` (the result is then ``limit + 1``).
    """
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if level > depth:
            depth = level
            if depth > limit:
                return depth
        stack.extend((child, level + 1) for child in children)
    return depth


def _json_scalar(value: Any) -> Any:
    """A JSON scalar as is (an integer outside the 64-bit range as its decimal text); a nested
    object or array as compact JSON text."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return msgspec.json.encode(value).decode()


def _parse_template(template: str) -> list[tuple[str, str | None, str | None, str]]:
    """``string.Formatter`` parse of ``template``: (literal, field, conversion, spec) items."""
    items = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is not None and not field:
            raise ValueError(f"template {template!r}: positional '{{}}' fields are not supported, name them")
        items.append((literal, field, conversion, spec or ""))
    return items


def _render(items: list[tuple[str, str | None, str | None, str]], values: Mapping[str, Any]) -> str:
    """Fill a parsed template; a missing (absent, null or empty) field renders as nothing,
    and the spaces right after it are dropped too.

    So ``"{ts} {level} {service} {message}\\n"`` renders ``"ERROR api disk full\\n"`` for a
    record without a timestamp.
    """
    formatter = string.Formatter()
    out: list[str] = []
    strip_spaces = False
    for literal, field, conversion, spec in items:
        out.append(literal.lstrip(" \t") if strip_spaces else literal)
        strip_spaces = False
        if field is None:
            continue
        value = values.get(field)
        if value is None or value == "":
            strip_spaces = True
            continue
        out.append(formatter.format_field(formatter.convert_field(value, conversion), spec))
    return "".join(out)


async def jsonl_records(
    lines: AsyncIterable[TextChunk] | Iterable[Any],
    *,
    message_field: str = "message",
    template: str | Callable[[dict[str, Any]], str] = DEFAULT_LOG_TEMPLATE,
    stats: DecodeStats | None = None,
    warn_every: int = 1000,
) -> AsyncIterator[TextChunk]:
    """Turn JSON-lines log records (one per input chunk) into log lines for the model.

    Each line is decoded with ``msgspec.json.decode`` and must be an object with
    ``message_field``. The chunk's ``meta`` holds the record's other fields, with
    well-known names normalised: the first of ``ts``/``timestamp``/``time``/``@timestamp``
    becomes ``"ts"``, of ``level``/``severity``/``levelname``/``lvl``/``log.level`` becomes
    ``"level"`` (upper-cased), of ``service``/``service.name``/``app``/``component``/
    ``logger`` becomes ``"service"``; the rest keep their names, nested values as compact
    JSON text. ``"line"`` comes from the input chunk's meta (and wins over a record field
    of that name).

    The text is ``template`` (``str.format`` syntax) filled with ``message`` (the message
    field as a str, trailing newlines removed), ``ts``, ``level``, ``service``, ``line`` and
    any other field by its name in the record; a field the record lacks renders as nothing,
    and the spaces after it are dropped (so the default ``"{ts} {level} {service}
    {message}\\n"`` gives ``"ERROR api disk full\\n"`` for a record without a timestamp).
    ``template`` may also be a function of that dict of values that returns the text.

    An integer outside the 64-bit range is kept as its decimal text (a state directory's log
    holds 64-bit integers).

    Malformed lines (numbers out of range included), records nested deeper than
    :data:`MAX_JSON_DEPTH` levels, non-objects, records without ``message_field`` (or with it
    null) and over-long lines cut into pieces are skipped and counted in ``stats.skipped_records``;
    one in every ``warn_every`` of them, starting with the first, is logged at WARNING with
    its line number. Blank lines are skipped silently. Never raises on bad input.
    """
    if warn_every < 1:
        raise ValueError(f"warn_every must be >= 1, got {warn_every}")
    items = _parse_template(template) if isinstance(template, str) else []
    stats = stats if stats is not None else DecodeStats()
    skipped = 0

    def skip(line: Any, reason: str) -> None:
        nonlocal skipped
        skipped += 1
        stats.skipped_records += 1
        if (skipped - 1) % warn_every == 0:
            logger.warning(
                "line %s: skipped JSON record: %s (%d skipped so far; logging 1 in %d)",
                line,
                reason,
                skipped,
                warn_every,
            )

    async with aclosing(iterate(lines)) as chunks:
        async for chunk in chunks:
            in_meta = chunk.meta or {}
            line = in_meta.get("line")
            part = in_meta.get("part")
            if part is not None:  # a line too long to hold: cut by read_lines, undecodable
                if part == 1:
                    skip(line, "line too long")
                continue
            if not chunk.text.strip():
                continue
            try:
                record = msgspec.json.decode(chunk.text)
            except msgspec.DecodeError as exc:  # (a ValidationError too: a number out of range)
                skip(line, f"malformed JSON ({exc})")
                continue
            except RecursionError:  # deeper than the decoder goes: the bound below, reached early
                skip(line, f"nested deeper than {MAX_JSON_DEPTH} levels")
                continue
            if nesting_depth(record) > MAX_JSON_DEPTH:
                skip(line, f"nested deeper than {MAX_JSON_DEPTH} levels")
                continue
            if not isinstance(record, dict):
                skip(line, f"not a JSON object (a {type(record).__name__})")
                continue
            if message_field not in record:
                skip(line, f"no {message_field!r} field")
                continue
            message = record[message_field]
            if message is None:
                skip(line, f"{message_field!r} is null")
                continue
            message = message if isinstance(message, str) else str(_json_scalar(message))
            message = message.rstrip("\r\n")
            meta: dict[str, Any] = {}
            canonical: dict[str, str] = {}
            for canon, keys in (("ts", _TS_KEYS), ("level", _LEVEL_KEYS), ("service", _SERVICE_KEYS)):
                for key in keys:
                    if key in record and key != message_field:
                        canonical[key] = canon
                        break
            for key, value in record.items():
                if key == message_field:
                    continue
                value = _json_scalar(value)
                if canonical.get(key) == "level" and isinstance(value, str):
                    value = value.upper()
                meta[canonical.get(key, key)] = value
            if line is not None:
                meta["line"] = line
            values = {**{k: _json_scalar(v) for k, v in record.items()}, **meta, "message": message}
            if isinstance(template, str):
                try:
                    text = _render(items, values)
                except (ValueError, TypeError) as exc:  # a format spec that does not fit this value
                    skip(line, f"template {template!r} does not fit ({exc})")
                    continue
            else:
                text = template(values)
            yield TextChunk(text=text, meta=meta)


# --------------------------------------------------------------------------------------
# chats and generic sources


async def _items(source: AsyncIterable[Any] | Iterable[Any], what: str) -> AsyncIterator[Any]:
    """Iterate a sync or async iterable."""
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    elif isinstance(source, Iterable):
        for item in source:
            yield item
    else:
        raise TypeError(f"{what} must be an iterable or async iterable, got {type(source).__name__}")


def _turn_fields(turn: Any, n: int) -> tuple[str, str]:
    if isinstance(turn, Mapping):
        if "role" not in turn or "content" not in turn:
            raise TypeError(f"turn {n}: a dict turn needs 'role' and 'content' keys, got {sorted(map(str, turn))}")
        role, content = turn["role"], turn["content"]
    elif isinstance(turn, (tuple, list)):
        if len(turn) != 2:
            raise TypeError(f"turn {n}: a tuple turn must be (role, text), got {len(turn)} items")
        role, content = turn
    elif hasattr(turn, "role") and hasattr(turn, "content"):
        role, content = turn.role, turn.content
    else:
        raise TypeError(
            f"turn {n}: expected a (role, text) tuple, a dict with 'role' and 'content', "
            f"or an object with .role and .content; got {type(turn).__name__}"
        )
    if not isinstance(role, str) or not isinstance(content, str):
        raise TypeError(
            f"turn {n}: role and content must be str, got {type(role).__name__} and {type(content).__name__}"
        )
    return role, content


async def chat_turns(turns: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[TextChunk]:
    """Yield chat turns as ``"{role}: {content}\\n"`` with ``meta {"role": role, "turn": n}``.

    A turn is a ``(role, text)`` tuple (or 2-item list), a mapping with ``"role"`` and
    ``"content"``, or an object with ``.role`` and ``.content`` (a msgspec Struct, a
    dataclass...). Both must be str. Turns are numbered from 1; a bad one raises
    ``TypeError`` naming its number.
    """
    n = 0
    async with aclosing(_items(turns, "turns")) as items:
        async for turn in items:
            n += 1
            role, content = _turn_fields(turn, n)
            yield TextChunk(text=f"{role}: {content}\n", meta={"role": role, "turn": n})


_BYTES_LIKE = (bytes, bytearray, memoryview)


async def iterate(
    source: AsyncIterable[Any] | Iterable[Any], *, stats: DecodeStats | None = None
) -> AsyncIterator[TextChunk]:
    """Normalise any text source to :class:`TextChunk` items.

    Items may be ``str`` (empty ones are dropped), :class:`TextChunk` (passed as is) or
    bytes-like (decoded with one :class:`Utf8Decoder` across consecutive items, so a
    character split between two items decodes whole). Anything else raises ``TypeError``
    naming the item's position (from 0). A bare ``str``, bytes or TextChunk given as
    ``source`` is one item, not a sequence of characters.
    """
    if isinstance(source, (str, TextChunk, *_BYTES_LIKE)):
        source = [source]
    decoder = Utf8Decoder(stats)
    pending = False  # bytes were decoded since the last flush
    i = -1
    async with aclosing(_items(source, "source")) as items:
        async for item in items:
            i += 1
            if isinstance(item, _BYTES_LIKE):
                pending = True
                text = decoder.decode(item)
                if text:
                    yield TextChunk(text=text)
                continue
            if pending:
                pending = False
                text = decoder.final()
                if text:
                    yield TextChunk(text=text)
            if isinstance(item, TextChunk):
                yield item
            elif isinstance(item, str):
                if item:
                    yield TextChunk(text=item)
            else:
                raise TypeError(f"item {i}: expected str, bytes or TextChunk, got {type(item).__name__}")
    if pending:
        text = decoder.final()
        if text:
            yield TextChunk(text=text)


# --------------------------------------------------------------------------------------
# plain-text log lines

_TS = (
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?(?:Z|UTC|[+-]\d{2}(?::?\d{2})?))?)?"
)
_TS_RE = re.compile(rf"\s*(?:\[(?P<bts>{_TS})\]|(?P<ts>{_TS})(?=\s|$))")
_LEVEL_RE = re.compile(
    r"\s*[\[(<]?(?P<level>TRACE|DEBUG|INFO|WARNING|WARN|ERROR|FATAL|CRITICAL)[\])>]?:?(?=\s|$)",
    re.IGNORECASE,
)
_SERVICE_RE = re.compile(r"\s+[\[(]?(?P<service>[A-Za-z_][\w.\-/]*?)(?:\[\d+\])?[\])]?:?(?=\s+\S)")


def parse_log_line(line: str) -> dict[str, Any]:
    """Best-effort metadata of a plain-text log line, shaped like :func:`jsonl_records`' meta.

    Recognises an ISO-8601 timestamp at the start (``2024-05-01T12:00:00Z``,
    ``2024-05-01 12:00:00,123``, optionally in brackets) as ``"ts"``; a level (TRACE, DEBUG,
    INFO, WARN, WARNING, ERROR, FATAL, CRITICAL; optionally bracketed or followed by ``:``)
    right after it (any case), or at the start of the line (upper case only), as ``"level"``;
    and, when both are there, the word after the level as ``"service"`` (as in
    ``"<ts> <LEVEL> <service> <message>"``; brackets, a ``[pid]`` and a trailing ``:`` are
    stripped). Returns ``{}`` when nothing matches.
    """
    meta: dict[str, Any] = {}
    pos = 0
    m = _TS_RE.match(line)
    if m:
        meta["ts"] = m.group("bts") or m.group("ts")
        pos = m.end()
    m = _LEVEL_RE.match(line, pos)
    if m and (pos or m.group("level").isupper()):  # without a timestamp: "error handling..." is prose
        meta["level"] = m.group("level").upper()
        pos = m.end()
        if "ts" in meta:
            s = _SERVICE_RE.match(line, pos)
            if s:
                meta["service"] = s.group("service")
    return meta
