"""Server-sent events: framing, and a response that ends when the server shuts down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse

KEEPALIVE_S = 15.0
"""A comment line this often on a quiet stream, so proxies keep the connection open."""


def frame(data: str | dict[str, Any], event: str | None = None) -> bytes:
    """One event: ``event: NAME`` (optional) and ``data: ...`` lines, then a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    lines = [f"event: {event}"] if event else []
    lines += [f"data: {line}" for line in text.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def until(items: AsyncIterator[Any], stopping: Any, keepalive: float = KEEPALIVE_S) -> AsyncIterator[Any]:
    """Items of ``items`` until it ends or ``stopping()`` turns true (checked every second);
    None after each ``keepalive`` seconds without an item (the caller sends a comment then)."""
    quiet = 0.0
    while not stopping():
        with anyio.move_on_after(1.0) as scope:
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            quiet += 1.0
            if quiet >= keepalive:
                quiet = 0.0
                yield None
            continue
        quiet = 0.0
        yield item
