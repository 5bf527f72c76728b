"""The OpenAI-compatible face: ``GET /v1/models`` and ``POST /v1/chat/completions``.

A chat completion feeds the conversation into a stream, then asks its last user message over
it. The stream is named by the request's ``user`` field, else the ``X-Xl3m-Stream`` header,
else ``default``. Clients resend the whole history with every request; the stream remembers
(chained digests of) the messages it was fed, in order, and feeds only those after the longest
prefix already fed, so a history is never fed twice. With a state dir the count and the last
chained digest are logged after each message (an input mark), so this holds across restarts
(a crash between a message and its mark feeds that one message again: at least once, never
lost). Messages are fed as chat turns (``"role: content\\n"``,
:func:`xl3m_stream.sources.chat_turns`, which indents a message's later lines so that none of
them reads as a turn of its own); the reader's prompt keeps special-token strings in stream
text as plain text, so fed text cannot forge the reader's own chat turns (see
:mod:`xl3m_stream.inference`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import sse
from .app import ApiError, _chain, _first, _public, decode, feed_items, read_body, streams_of
from .streams import DEFAULT_STREAM, Stream, chain_digests

STREAM_HEADER = "x-xl3m-stream"
CHAT_SOURCE = "chat:messages"
"""The input (``Engine.mark_input``) under which a stream with a state dir logs how many chat
messages it holds and the digest of their chain: a restarted server still feeds only new ones."""


class Message(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(msgspec.Struct):
    messages: list[Message]
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    user: str | None = None


def _text(message: Message, n: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(422, f"messages[{n}]: only text content parts are supported", "invalid_request_error")
        parts.append(part["text"])
    return "".join(parts)


async def models(request: Request) -> Response:
    model_id = request.app.state.settings.model_id
    return JSONResponse(
        {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "xl3m-stream"}]}
    )


async def _feed_conversation(request: Request, stream: Stream, turns: list[tuple[str, str]]) -> None:
    from ..sources import TextChunk, chat_turns

    chain = chain_digests(turns)
    engine = stream.engine
    async with stream.chat_lock:
        fed = stream.chat_fed
        if not fed and engine.config.state_dir is not None:  # first chat since a (re)start
            mark, _ = engine.input_resume(CHAT_SOURCE)
            if mark is not None and 0 < mark.taken <= len(chain) and chain[mark.taken - 1] == mark.digest:
                fed.extend(chain[: mark.taken])  # the history fed before the restart
        k = 0
        while k < min(len(fed), len(chain)) and fed[k] == chain[k]:
            k += 1
        del fed[k:]  # a history that diverges from what was fed continues from where it diverges
        n = k
        async for chunk in chat_turns(turns[k:]):
            meta = {**(chunk.meta or {}), "turn": n + 1}
            await feed_items(request, stream, [TextChunk(text=chunk.text, meta=meta)])
            fed.append(chain[n])
            n += 1
            if engine.config.state_dir is not None:  # logged after the message: at worst fed twice
                await engine.mark_input(CHAT_SOURCE, n, complete=True, digest=chain[n - 1])


def question_tail(engine: Any, message: str) -> str:
    """The question asked for a user message: the message itself, or, when it is longer than
    the engine's ``max_question_tokens`` (a pasted document that ends in its question, a key
    context sent by another engine), its last lines that fit (the whole message is fed either
    way). A last line too long alone is cut to its last tokens."""
    limit = engine.config.max_question_tokens
    tok = engine.tokenizer

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    if count(message) <= limit:
        return message
    lines = [line for line in message.splitlines() if line.strip()]
    kept: list[str] = []
    for line in reversed(lines):
        if count("\n".join([line, *kept])) > limit:
            break
        kept.insert(0, line)
    if kept:
        return "\n".join(kept)
    ids = tok.encode(lines[-1], add_special_tokens=False)[-max(1, limit - 8) :]  # (re-encoding may merge)
    return tok.decode(ids).strip() or tok.decode(ids)


async def chat_completions(request: Request) -> Response:
    settings = request.app.state.settings
    body = decode(await read_body(request), ChatBody)
    if not body.messages:
        raise ApiError(422, "messages must not be empty", "invalid_request_error")
    turns = [(m.role, _text(m, i)) for i, m in enumerate(body.messages)]
    question = next((content for role, content in reversed(turns) if role == "user"), None)
    if question is None or not question.strip():
        raise ApiError(422, "the conversation needs a user message with text to answer", "invalid_request_error")
    name = body.user or request.headers.get(STREAM_HEADER) or DEFAULT_STREAM
    stream = await streams_of(request).get(name, create=True)
    await _feed_conversation(request, stream, turns)
    engine = stream.engine
    question = await anyio.to_thread.run_sync(question_tail, engine, question)
    max_new = body.max_completion_tokens or body.max_tokens
    ident, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), settings.model_id

    if not body.stream:
        answer = await engine.ask(question, max_new_tokens=max_new)
        completion = engine.reader_tokens(answer.text) if answer.text else 0
        limit = max_new or engine.config.max_new_tokens
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text},
                        "logprobs": None,
                        "finish_reason": "length" if completion >= limit else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": answer.context_tokens,
                    "completion_tokens": completion,
                    "total_tokens": answer.context_tokens + completion,
                },
                "system_fingerprint": None,
                "xl3m_stream": {"stream": stream.name, "stream_tokens": answer.stream_tokens},
            }
        )

    pieces = engine.ask_stream(question, max_new_tokens=max_new)
    first = await _first(pieces)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse.frame(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
        )

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in _chain(first, pieces):
                yield chunk({"content": piece})
        except Exception as exc:
            yield sse.frame({"error": {"message": _public(exc), "type": "engine_error"}})
        else:
            yield chunk({}, "stop")
        yield b"data: [DONE]\n\n"

    return sse.response(events())
