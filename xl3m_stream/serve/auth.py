"""Request guards: the bearer token and the request-size limit (pure ASGI middleware)."""

from __future__ import annotations

import hmac
import json
from typing import Any

OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without a token (liveness probes)."""


def error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


async def send_error(send: Any, status: int, message: str, kind: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message, kind)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Refuses requests without ``Authorization: Bearer KEY`` (when a key is set; constant-time
    compare) with 401, and bodies whose Content-Length exceeds ``max_body`` with 413 before they
    are read (a chunked body is counted as it is read, see ``app.read_body``)."""

    def __init__(self, app: Any, api_key: str | None, max_body: int) -> None:
        self.app = app
        self._key = f"Bearer {api_key}".encode() if api_key else None
        self._max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        if self._key is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._key):
                await send_error(send, 401, "missing or wrong API key: send Authorization: Bearer KEY",
                                 "authentication_error", [(b"www-authenticate", b"Bearer")])  # fmt: skip
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self._max_body
            except ValueError:
                await send_error(send, 400, "bad Content-Length", "invalid_request_error")
                return
            if too_big:
                await send_error(send, 413, f"request body over the limit ({self._max_body} bytes)",
                                 "request_too_large")  # fmt: skip
                return
        await self.app(scope, receive, send)
