"""The registry of named streams: one :class:`~xl3m_stream.Engine` per name, created on first use.

Each engine runs in its own task of the registry's task group (an engine's task group must be
entered and left by the same task, so a request handler cannot own it); the task holds the
engine open until the registry closes. With a state directory each stream keeps its state in
``DIR/<name>``, and every subdirectory found there at start is opened again (resumed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

log = logging.getLogger("xl3m_stream.serve")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A stream name: also the name of its state subdirectory, so no separators and no ``..``."""

DEFAULT_STREAM = "default"


class StreamNameError(ValueError):
    """The name is not a valid stream name."""


class StreamLimitError(RuntimeError):
    """The server holds as many streams as it may."""


class UnknownStreamError(LookupError):
    """No stream by that name (on a route that does not create one)."""


class ShuttingDownError(RuntimeError):
    """The server is shutting down: no new streams."""


def is_stream_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and ".." not in name


def check_name(name: str) -> str:
    if not is_stream_name(name):
        raise StreamNameError(
            f"invalid stream name {name[:80]!r}: 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, no '..'"
            if isinstance(name, str)
            else "invalid stream name"
        )
    return name


@dataclass
class Stream:
    """A named stream: its engine and what the chat route has fed it."""

    name: str
    engine: Any
    chat_fed: list[str] = field(default_factory=list)
    """Chained digests of the chat messages fed so far (:func:`chain_digests`; a resent history
    is not fed again)."""
    chat_lock: anyio.Lock = field(default_factory=anyio.Lock)
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)


def chain_digests(turns: Sequence[tuple[str, str]]) -> list[str]:
    """``out[i]``: SHA-256 (hex) over messages ``0..i`` (each role and content, length-framed), so
    equal digests at ``i`` mean equal histories up to ``i``."""
    out, prev = [], ""
    for role, content in turns:
        data = f"{prev}\0{len(role)}:{role}\0{content}".encode("utf-8", "surrogatepass")
        prev = hashlib.sha256(data).hexdigest()
        out.append(prev)
    return out


class Streams:
    """Named engines sharing one base configuration."""

    def __init__(self, config: Any, *, state_dir: str | None = None, max_streams: int = 16) -> None:
        self.config = config
        self.state_dir = Path(state_dir) if state_dir else None
        self.max_streams = max_streams
        self._streams: dict[str, Stream] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()
        self.closing = False

    # ------------------------------------------------------------------ lifecycle
    async def open(self, tg: anyio.abc.TaskGroup) -> None:
        """Start: resume every stream kept in the state directory."""
        self._tg = tg
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in self.state_dir.iterdir() if p.is_dir() and is_stream_name(p.name))
        if len(names) > self.max_streams:
            log.warning("state dir holds %d streams, more than --max-streams %d: opening the first %d",
                        len(names), self.max_streams, self.max_streams)  # fmt: skip
        for name in names[: self.max_streams]:
            await self.get(name, create=True)

    async def aclose(self) -> None:
        """Close every engine (each writes its snapshot when it has a state directory)."""
        self.closing = True
        for stream in list(self._streams.values()):
            stream.stop.set()
        for stream in list(self._streams.values()):
            await stream.done.wait()
        self._streams.clear()

    # ------------------------------------------------------------------ access
    def items(self) -> list[tuple[str, Stream]]:
        return sorted(self._streams.items())

    async def get(self, name: str, *, create: bool = False) -> Stream:
        check_name(name)
        stream = self._streams.get(name)
        if stream is not None:
            return stream
        if not create:
            raise UnknownStreamError(f"no stream named {name!r}")
        async with self._lock:  # one engine per name, even when two requests race to create it
            stream = self._streams.get(name)
            if stream is not None:
                return stream
            if self.closing or self._tg is None:
                raise ShuttingDownError("the server is shutting down: no new streams")
            if len(self._streams) >= self.max_streams:
                raise StreamLimitError(f"stream limit reached ({self.max_streams} streams): no new stream {name!r}")
            stream = await self._tg.start(self._run, name)
            self._streams[name] = stream
            return stream

    def config_for(self, name: str) -> Any:
        if self.state_dir is None:
            return self.config
        from .._engine.journal import state_defaults

        sub = str(self.state_dir / name)
        if os.path.isdir(sub):
            return state_defaults(self.config, sub).replace(state_dir=sub)
        return self.config.replace(state_dir=sub)

    async def _run(self, name: str, *, task_status: anyio.abc.TaskStatus[Stream]) -> None:
        from ..engine import Engine

        done = anyio.Event()
        started = False
        try:
            async with Engine(self.config_for(name)) as engine:
                stream = Stream(name=name, engine=engine, done=done)
                task_status.started(stream)
                started = True
                await stream.stop.wait()
                log.info("closing stream %s", name)
        except Exception as exc:
            if not started:
                raise  # to the request that asked for the stream
            log.error("stream %s failed while closing: %s", name, exc)  # the other streams go on
        finally:
            self._streams.pop(name, None)
            done.set()

    async def feed(self, stream: Stream, items: Sequence[Any]) -> int:
        """Feed ``items`` in order (waiting on backpressure as long as it takes)."""
        tokens = 0
        for item in items:
            tokens += await stream.engine.feed(item)
        return tokens
