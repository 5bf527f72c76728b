"""Decoding for :mod:`xl3m_stream.sources`: the chunk and counter records, the UTF-8 decoder
that never fails (U+FFFD for bad bytes, NUL dropped, both counted) and the bounded-memory
line splitter."""

from __future__ import annotations

import codecs
import threading
from typing import Any

import msgspec

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
