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

The code lives in ``xl3m_stream._sources`` (``decode``: records, decoding and line
splitting; ``files``: files, stdin and tail -F; ``iterables``: chat turns and generic
sources; ``logs``: JSON-lines records and plain-text log lines); this module is the public
one and offers every name, constant and logger it always did.
"""

from __future__ import annotations

from ._sources.decode import DecodeStats, TextChunk, Utf8Decoder
from ._sources.files import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from ._sources.files import DEFAULT_MAX_LINE_CHARS as DEFAULT_MAX_LINE_CHARS
from ._sources.files import PathArg as PathArg
from ._sources.files import (
    SourceIsADirectoryError,
    SourceNotFoundError,
    follow,
    read_bytes_chunks,
    read_lines,
    read_text,
)
from ._sources.iterables import _items as _items  # private helpers, importable here as before
from ._sources.iterables import _turn_fields as _turn_fields
from ._sources.iterables import chat_turns, iterate
from ._sources.logs import DEFAULT_LOG_TEMPLATE as DEFAULT_LOG_TEMPLATE
from ._sources.logs import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from ._sources.logs import jsonl_records, nesting_depth, parse_log_line
from ._sources.logs import logger as logger

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
