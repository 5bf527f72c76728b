"""Chats and generic sources for :mod:`xl3m_stream.sources`: :func:`chat_turns` and
:func:`iterate`, over sync or async iterables."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from typing import Any

from .decode import DecodeStats, TextChunk, Utf8Decoder

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
    problem = role_problem(role)
    if problem:
        raise TypeError(f"turn {n}: {problem}")
    return role, content


def role_problem(role: str) -> str | None:
    """Why ``role`` cannot head a chat turn (None: it can): one line, no colon, not blank."""
    if not role.strip():
        return "role must not be empty"
    if len(role.splitlines()) != 1 or role != role.strip() or ":" in role:
        return f"role must be one word or line without a colon, got {role[:40]!r}"
    return None


def turn_text(role: str, content: str) -> str:
    """``"role: content\\n"`` with the content's later lines indented by two spaces, so that no
    line of a message reads as a turn of its own (a ``"user: ..."`` line inside a document or
    an assistant reply cannot pose as the user). Line breaks of any kind become ``"\\n"``."""
    return f"{role}: " + "\n  ".join(content.splitlines() or [""]) + "\n"


async def chat_turns(turns: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[TextChunk]:
    """Yield chat turns as ``"{role}: {content}\\n"`` (:func:`turn_text`: the content's later
    lines indented) with ``meta {"role": role, "turn": n}``.

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
            yield TextChunk(text=turn_text(role, content), meta={"role": role, "turn": n})


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
