"""Memory for agents: tell it everything, recall what matters for a question.

An agent (or a chat assistant) adds messages and documents as they come; the memory streams
them through an :class:`~xl3m_stream.Engine`, which keeps a bounded store of segments. When
the agent needs to know something, :meth:`AgentMemory.recall` returns the key context for its
question (the stored segments most relevant to it, re-scored against it, in stream order,
with provenance), and :meth:`AgentMemory.answer` has the reader answer from that context::

    async with AgentMemory(model="default") as memory:
        await memory.add("My locker code is 4812.", role="user")
        await memory.add_document(manual_text, name="manual.txt")
        context = await memory.recall("What is my locker code?")
        print(context.text)

:class:`SyncAgentMemory` is the same API for synchronous code (the engine runs on an event
loop in a background thread, as :class:`~xl3m_stream.SyncEngine` does). One API in two
flavours, without duplicated logic: the sync class only crosses the thread boundary.

History is unbounded but memory is not: the engine keeps ``store_segments`` segments (the
most relevant to the conversation's recent tokens when they arrived) plus, with
``local_window_tokens``, the latest exchange. A recall re-scores the kept segments against
its question, so its cost grows with ``store_segments``, not with the history.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Any

from ._portal import LoopThread
from ._sources.iterables import _items, _turn_fields, role_problem, turn_text
from .config import EngineConfig
from .engine import Answer, Engine
from .errors import InputError
from .inference import KeyContext
from .sources import TextChunk

__all__ = ["MEMORY_DEFAULTS", "AgentMemory", "SyncAgentMemory"]

MEMORY_DEFAULTS: dict[str, Any] = {
    "segment_cut": "lines",  # a message or a document line is not cut in two when it fits
    "segment_tokens": 128,  # short segments: a recall picks single messages, not whole pages
    "store_segments": 512,  # about 64k tokens of history kept as candidates
    "context_tokens": 512,  # a small reader does better with a small, focused context
    "local_window_tokens": 64,  # the latest exchange is always in view
    "reader_prompt": "chat",
}
"""Engine settings a memory starts from when no ``config`` is given (keyword overrides win)."""


class AgentMemory:
    """Asynchronous agent memory on one :class:`~xl3m_stream.Engine`.

    ``AgentMemory(config=None, **overrides)``: without ``config`` the engine starts from
    :data:`MEMORY_DEFAULTS`; keyword arguments override any :class:`EngineConfig` field.
    Use ``async with AgentMemory(...) as memory:``.
    """

    def __init__(self, config: EngineConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = EngineConfig(**{**MEMORY_DEFAULTS, **overrides})
        elif overrides:
            config = config.replace(**overrides)
        self._engine = Engine(config)
        self._turns = 0
        self._documents = 0

    # --- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> AgentMemory:
        await self._engine.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._engine.aclose()

    @property
    def engine(self) -> Engine:
        """The engine underneath (for events, watches, metrics)."""
        return self._engine

    @property
    def config(self) -> EngineConfig:
        return self._engine.config

    @property
    def tokens(self) -> int:
        """Tokens taken in so far."""
        return self._engine.stream_tokens

    @property
    def messages(self) -> int:
        """Messages added so far (documents not counted)."""
        return self._turns

    # --- writing -------------------------------------------------------------------------
    async def add(self, text: str, role: str | None = None) -> int:
        """Remember one message: ``"role: text"`` when a role is given (as
        :func:`~xl3m_stream.sources.chat_turns` writes chat turns: later lines indented, so none
        poses as another turn), else the text alone.

        Segments record ``{"role": role, "turn": n}`` as metadata. Returns the tokens taken in.
        """
        if not isinstance(text, str):
            raise InputError(f"a message must be a str, got {type(text).__name__}")
        if role is not None:
            problem = role_problem(role) if isinstance(role, str) else "role must be a string or None"
            if problem:
                raise InputError(problem)
        self._turns += 1
        body = turn_text(role, text) if role else text
        meta: dict[str, Any] = {"turn": self._turns}
        if role:
            meta["role"] = role
        return await self._engine.feed(TextChunk(text=_line(body), meta=meta))

    async def extend(self, turns: Iterable[Any] | AsyncIterable[Any]) -> int:
        """Remember many messages: ``(role, text)`` pairs, ``{"role", "content"}`` dicts or
        objects with ``.role`` and ``.content``. Returns the tokens taken in."""
        total = 0
        n = 0
        async for turn in _items(turns, "turns"):
            n += 1
            try:
                role, content = _turn_fields(turn, n)
            except TypeError as exc:
                raise InputError(str(exc)) from None
            total += await self.add(content, role=role)
        return total

    async def add_document(self, text: str, name: str | None = None) -> int:
        """Remember a document: a ``Document <name>:`` header line, then its text.

        Segments record ``{"document": name}`` as metadata. Returns the tokens taken in.
        """
        if not isinstance(text, str):
            raise InputError(f"a document must be a str, got {type(text).__name__}")
        self._documents += 1
        name = name or f"#{self._documents}"
        meta = {"document": name}
        return await self._engine.feed(TextChunk(text=f"Document {name}:\n{_line(text)}", meta=meta))

    # --- reading -------------------------------------------------------------------------
    async def recall(self, question: str) -> KeyContext:
        """The key context for ``question``: what the memory holds that matters for it, in
        the order it was added, with provenance (offsets, scores, roles, documents)."""
        return await self._engine.key_context(question)

    async def answer(self, question: str, *, max_new_tokens: int | None = None) -> Answer:
        """Answer ``question`` from the recalled context with the reader model."""
        return await self._engine.ask(question, max_new_tokens=max_new_tokens)


class SyncAgentMemory:
    """:class:`AgentMemory` for synchronous code: ``with SyncAgentMemory(...) as memory:``."""

    def __init__(self, config: EngineConfig | None = None, *, backend: str = "asyncio", **overrides: Any) -> None:
        self._memory = AgentMemory(config, **overrides)
        self._loop = LoopThread(self._memory, backend, "memory", "SyncAgentMemory")

    def start(self) -> SyncAgentMemory:
        """Start the memory; while it runs this does nothing (it runs once, see :class:`SyncEngine`)."""
        self._loop.start()
        return self

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> SyncAgentMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._loop.call(fn, *args, **kwargs)

    @property
    def memory(self) -> AgentMemory:
        """The asynchronous memory underneath (use it only through this wrapper)."""
        return self._memory

    @property
    def config(self) -> EngineConfig:
        return self._memory.config

    @property
    def tokens(self) -> int:
        return self._memory.tokens

    @property
    def messages(self) -> int:
        return self._memory.messages

    def add(self, text: str, role: str | None = None) -> int:
        return self._call(self._memory.add, text, role=role)

    def extend(self, turns: Iterable[Any]) -> int:
        return self._call(self._memory.extend, list(turns))

    def add_document(self, text: str, name: str | None = None) -> int:
        return self._call(self._memory.add_document, text, name=name)

    def recall(self, question: str) -> KeyContext:
        return self._call(self._memory.recall, question)

    def answer(self, question: str, *, max_new_tokens: int | None = None) -> Answer:
        return self._call(self._memory.answer, question, max_new_tokens=max_new_tokens)


def _line(text: str) -> str:
    """``text`` ending in exactly one newline (so the next message starts a line)."""
    return text.rstrip("\n") + "\n"
