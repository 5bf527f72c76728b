"""The HTTP application: routes over the registry of named streams.

Every error is a JSON object ``{"error": {"message": ..., "type": ...}}`` with its status; a
stack trace never reaches a client (unexpected failures are logged, answered 500).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import sse
from .auth import Guard
from .prom import CONTENT_TYPE, render
from .streams import ShuttingDownError, Stream, StreamLimitError, StreamNameError, Streams, UnknownStreamError

log = logging.getLogger("xl3m_stream.serve")

MODEL_ID = "xl3m-stream"


@dataclass
class ServeSettings:
    """What the server enforces besides the engine configuration."""

    api_key: str | None = None
    max_body: int = 8 * 1024 * 1024
    """Largest request body in bytes (413 beyond)."""
    feed_timeout: float = 30.0
    """Seconds a feed waits for room in the scoring queue before it is answered 429 with
    Retry-After (nothing of it taken then); once a body is being taken it is taken whole."""
    max_streams: int = 16
    """Streams the server holds at most (each is an engine with its own model copy): 429 beyond."""
    state_dir: str | None = None
    model_id: str = MODEL_ID


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


# ---------------------------------------------------------------------- request helpers
async def read_body(request: Request) -> bytes:
    """The body, refused with 413 once it passes the limit (also when it is sent chunked)."""
    limit = request.app.state.settings.max_body
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over the limit ({limit} bytes)", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def decode(body: bytes, kind: type[Any]) -> Any:
    """The JSON body as ``kind``: 422 with msgspec's message when it is not JSON or a field is wrong."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.DecodeError as exc:  # (ValidationError included)
        raise ApiError(422, f"bad request body: {exc}", "invalid_request_error") from None


def streams_of(request: Request) -> Streams:
    return request.app.state.streams


async def stream_of(request: Request, *, create: bool = False) -> Stream:
    return await streams_of(request).get(request.path_params["name"], create=create)


def stopping(request: Request) -> Any:
    streams = streams_of(request)
    return lambda: streams.closing


async def feed_items(request: Request, stream: Stream, items: list[Any]) -> int:
    """Feed ``items`` in order. Waits up to ``feed_timeout`` for room in the scoring queue and
    answers 429 (Retry-After) if none comes: then nothing of the request was taken, so it can be
    sent again whole. Once begun, a body is taken whole (the request waits on backpressure)."""
    settings: ServeSettings = request.app.state.settings
    try:
        with anyio.fail_after(settings.feed_timeout):
            await stream.engine.wait_for_room()
    except TimeoutError:
        retry = str(max(1, math.ceil(settings.feed_timeout / 10)))
        raise ApiError(
            429,
            f"the stream is busy (scoring lags behind the feeds; no room for {settings.feed_timeout:g} s): "
            "nothing of this request was taken, send it again later",
            "backpressure",
            {"Retry-After": retry},
        ) from None
    return await streams_of(request).feed(stream, items)


# ---------------------------------------------------------------------- bodies
TEXT_TYPES = frozenset({"", "application/octet-stream", "application/x-www-form-urlencoded"})
"""Fed as text besides text/*: a raw body, and what ``curl --data-binary`` sends by default."""
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/jsonlines"})


class NdjsonLine(msgspec.Struct):
    text: str
    meta: dict[str, Any] | None = None


class AskBody(msgspec.Struct):
    question: str
    max_new_tokens: int | None = None
    stream: bool = False
    rescore: str | None = None


class WatchBody(msgspec.Struct):
    question: str
    threshold: str | float | None = None
    measure: str | None = None
    warmup: int | None = None
    cooldown: int | None = None
    min_score: float | None = None
    min_overlap: float | str | None = "auto"
    explain: bool = False


# ---------------------------------------------------------------------- routes
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def list_streams(request: Request) -> Response:
    streams = streams_of(request)
    return JSONResponse(
        {
            "streams": [{"name": n, "stream_tokens": s.engine.stream_tokens} for n, s in streams.items()],
            "max_streams": streams.max_streams,
        }
    )


async def feed(request: Request) -> Response:
    from ..sources import TextChunk

    ctype = request.headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    body = await read_body(request)
    if ctype in TEXT_TYPES or ctype.startswith("text/"):
        items: list[Any] = [body] if body else []  # UTF-8 bytes (invalid sequences replaced, counted)
    elif ctype in NDJSON_TYPES:
        items = []
        for n, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = msgspec.json.decode(line, type=NdjsonLine)
            except msgspec.DecodeError as exc:
                raise ApiError(422, f"line {n}: {exc}", "invalid_request_error") from None
            if rec.text:
                items.append(TextChunk(text=rec.text, meta=rec.meta))
    else:
        raise ApiError(415, f"feed takes text/plain or application/x-ndjson, not {ctype}", "unsupported_media_type")
    stream = await stream_of(request, create=True)
    tokens = await feed_items(request, stream, items)
    return JSONResponse({"tokens": tokens, "stream_tokens": stream.engine.stream_tokens})


async def flush(request: Request) -> Response:
    stream = await stream_of(request)
    tokens = await stream.engine.flush()
    return JSONResponse({"tokens": tokens, "stream_tokens": stream.engine.stream_tokens})


async def ask(request: Request) -> Response:
    from .._engine.answer import answer_json

    body = decode(await read_body(request), AskBody)
    if not body.question.strip():
        raise ApiError(422, "question must not be empty", "invalid_request_error")
    stream = await stream_of(request)
    engine = stream.engine
    started = time.perf_counter()
    if not body.stream:
        answer = await engine.ask(body.question, rescore=body.rescore, max_new_tokens=body.max_new_tokens)
        return JSONResponse(answer_json(answer, time.perf_counter() - started))
    pieces = engine.ask_stream(body.question, rescore=body.rescore, max_new_tokens=body.max_new_tokens)
    first = await _first(pieces)  # errors before the first piece (a bad question) are still a status code

    async def events() -> AsyncIterator[bytes]:
        text = []
        try:
            async for piece in _chain(first, pieces):
                text.append(piece)
                yield sse.frame({"text": piece}, "piece")
        except Exception as exc:
            log.warning("ask stream on %s failed: %s", stream.name, exc)
            yield sse.frame({"error": {"message": _public(exc), "type": "engine_error"}}, "error")
            return
        yield sse.frame(
            {"answer": "".join(text), "question": body.question, "stream_tokens": engine.stream_tokens,
             "seconds": round(time.perf_counter() - started, 3)},
            "done",
        )  # fmt: skip

    return sse.response(events())


_END = object()


async def _first(pieces: AsyncIterator[str]) -> Any:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return _END


async def _chain(first: Any, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    if first is _END:
        return
    yield first
    async for piece in rest:
        yield piece


async def events(request: Request) -> Response:
    stream = await stream_of(request)
    subscription = stream.engine.events()
    done = stopping(request)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b": subscribed\n\n"
            async for event in sse.until(subscription, done):
                if event is None:
                    yield b": keep-alive\n\n"
                else:
                    yield sse.frame(msgspec.json.encode(event).decode(), type(event).__name__)
        finally:
            subscription.close()

    return sse.response(body())


async def add_watch(request: Request) -> Response:
    body = decode(await read_body(request), WatchBody)
    stream = await stream_of(request)
    options = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None and k != "question"}
    if body.min_overlap is None:
        options["min_overlap"] = None
    try:
        watch_id = stream.engine.watch(body.question, **options)
    except (ValueError, TypeError) as exc:  # ConfigError / InputError are ValueErrors
        raise ApiError(422, _public(exc), "invalid_request_error") from None
    return JSONResponse({"id": watch_id}, status_code=201)


async def list_watches(request: Request) -> Response:
    stream = await stream_of(request)
    return JSONResponse({"watches": msgspec.to_builtins(stream.engine.watches())})


async def delete_watch(request: Request) -> Response:
    stream = await stream_of(request)
    watch_id = request.path_params["id"]
    if watch_id not in {w.id for w in stream.engine.watches()}:
        raise ApiError(404, f"no watch {watch_id} on stream {stream.name!r}", "not_found")
    stream.engine.unwatch(watch_id)
    return JSONResponse({"id": watch_id, "deleted": True})


async def metrics(request: Request) -> Response:
    text = render((name, s.engine.metrics()) for name, s in streams_of(request).items())
    return Response(text, media_type=CONTENT_TYPE)


# ---------------------------------------------------------------------- errors
def _public(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error(exc.status, exc.message, exc.kind, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error(exc.status_code, str(exc.detail), kind, exc.headers)


async def _xl3m_error(request: Request, exc: Exception) -> Response:
    from ..errors import ConfigError, EngineClosedError, InputError

    if isinstance(exc, (InputError, ConfigError)):
        return error(400, _public(exc), "invalid_request_error")
    if isinstance(exc, EngineClosedError):
        return error(503, "the stream is closed (the server is shutting down)", "unavailable")
    log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return error(500, _public(exc), "engine_error")


async def _stream_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StreamNameError):
        return error(400, _public(exc), "invalid_stream_name")
    if isinstance(exc, UnknownStreamError):
        return error(404, _public(exc), "stream_not_found")
    if isinstance(exc, StreamLimitError):
        return error(429, _public(exc), "stream_limit")
    return error(503, _public(exc), "unavailable")  # ShuttingDownError


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc, exc_info=exc)
    return error(500, f"internal error ({type(exc).__name__})", "internal_error")


# ---------------------------------------------------------------------- the application
def create_app(config: Any, settings: ServeSettings | None = None) -> Any:
    """The ASGI application: ``config`` (an EngineConfig) is every stream's configuration."""
    from ..errors import Xl3mError
    from . import openai_api

    settings = settings or ServeSettings()
    streams = Streams(config, state_dir=settings.state_dir, max_streams=settings.max_streams)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await streams.open(tg)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await streams.aclose()

    s = "/v1/streams/{name}"
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", openai_api.models, methods=["GET"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/streams", list_streams, methods=["GET"]),
        Route(f"{s}/feed", feed, methods=["POST"]),
        Route(f"{s}/flush", flush, methods=["POST"]),
        Route(f"{s}/ask", ask, methods=["POST"]),
        Route(f"{s}/events", events, methods=["GET"]),
        Route(f"{s}/watches", add_watch, methods=["POST"]),
        Route(f"{s}/watches", list_watches, methods=["GET"]),
        Route(s + "/watches/{id:int}", delete_watch, methods=["DELETE"]),
    ]
    handlers = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Xl3mError: _xl3m_error,
        StreamNameError: _stream_error,
        UnknownStreamError: _stream_error,
        StreamLimitError: _stream_error,
        ShuttingDownError: _stream_error,
        Exception: _unexpected,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.settings = settings
    app.state.streams = streams
    guarded = Guard(app, settings.api_key, settings.max_body)
    guarded.state = app.state  # (the serve command marks streams.closing on SIGTERM)
    return guarded
