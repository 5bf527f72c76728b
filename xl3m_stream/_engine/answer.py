"""Reading: the reader's room for a question, the key context turned into a prompt, and
generation in a worker thread whose text pieces come back as they are made."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import closing
from typing import Any

import anyio
import msgspec

from ..config import EngineConfig
from ..devices import DevicePool
from ..errors import InputError
from ..events import Alert
from ..inference import ContextSegment, KeyContext, assemble
from ..segment import Segment
from ..store import StoreEntry

Spawn = Callable[..., None]  # the facade's task group's start_soon


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the time of one ``ask`` went, in seconds."""

    wait_s: float
    """Waiting for the segments fed before the call to be scored."""
    rescore_s: float
    """Re-scoring stored candidates (and the unsegmented tail) against the question."""
    first_token_s: float | None
    """From the call to the first answer text (None when nothing was generated)."""
    total_s: float


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The result of ``Engine.ask``."""

    text: str
    question: str
    segments: list[ContextSegment]
    """The key context in stream order, with token offsets and scores (``local`` = recent window)."""
    context_tokens: int
    stream_tokens: int
    rescored: int
    """How many candidates were re-scored against this question."""
    timings: Timings
    model: str


def answer_json(answer: Answer, seconds: float) -> dict[str, Any]:
    """The one JSON shape of an answer: `xl3m-stream ask --json`, the demo and the server's ask route."""
    return {
        "answer": answer.text,
        "question": answer.question,
        "segments": [
            {"start": s.start, "end": s.end, "score": s.score, "text": s.text, **({"local": True} if s.local else {})}
            for s in answer.segments
        ],
        "stream_tokens": answer.stream_tokens,
        "seconds": round(seconds, 3),
        "ask_seconds": round(answer.timings.total_s, 3),
    }


def check_max_new_tokens(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32768):
        raise InputError(f"max_new_tokens must be an int from 1 to 32768 (or None), got {value!r}")


REMOTE_READER_SLOTS = 8
"""Answers in flight at once on a remote reader unless ``reader_concurrency`` says otherwise."""


def reader_slots(config: EngineConfig, reader: Any) -> int:
    """How many answers ``reader`` writes at once (``EngineConfig.reader_concurrency``)."""
    from ..remote import RemoteReader

    if config.reader_concurrency is not None:
        return config.reader_concurrency
    return REMOTE_READER_SLOTS if isinstance(reader, RemoteReader) else 1


class Answerer:
    def __init__(self, config: EngineConfig, pool: DevicePool, tokenizer: Any, spawn: Spawn) -> None:
        self._config = config
        self._pool = pool
        self._tokenizer = tokenizer
        self._spawn = spawn
        self._limiters = {r.index: anyio.CapacityLimiter(reader_slots(config, r.reader)) for r in pool.replicas}

    @property
    def reader(self) -> Any:
        return self._pool.first.reader

    def budget_for(self, question: str, *, max_new_tokens: int | None = None, whole_window: bool = False) -> int:
        """Reader tokens of key context an answer may use (see ``Engine.budget_for``)."""
        reader = self.reader
        max_new = max_new_tokens or self._config.max_new_tokens
        room = reader.room(question, max_new)
        if room < 1:
            raise InputError(
                f"question of {reader.question_tokens(question)} tokens + {max_new} answer tokens does not fit "
                f"the reader's window of {reader.window} tokens"
            )
        return room if whole_window else min(self._config.context_tokens, room)

    def context_of(
        self,
        segments: Sequence[Segment],
        question: str,
        scores: Sequence[float | None] | None,
        max_new_tokens: int | None,
        budget: int | None,
        stream_tokens: int,
    ) -> KeyContext:
        """Segments someone else chose, spliced in stream order as the engine's own key context
        is; InputError when they do not fit ``budget`` (default: ``budget_for`` the question)."""
        room = self.budget_for(question, max_new_tokens=max_new_tokens, whole_window=True)
        if budget is not None and budget > room:
            raise InputError(f"budget of {budget} tokens exceeds the {room} the reader's window leaves")
        budget = budget if budget is not None else self.budget_for(question, max_new_tokens=max_new_tokens)
        values = list(scores) if scores is not None else [None] * len(segments)
        if len(values) != len(segments):
            raise InputError(f"{len(values)} scores for {len(segments)} segments")
        entries = sorted(
            (
                StoreEntry(segment=s, score=0.0 if v is None else float(v))
                for s, v in zip(segments, values, strict=True)
            ),
            key=lambda e: e.segment.seq,
        )
        reader = self.reader
        ctx = assemble(
            entries,
            [],
            0,
            tokenizer=self._tokenizer,
            question=question,
            budget=budget,
            stream_tokens=stream_tokens,
            count=reader.count,
        )
        content = sum(reader.count(s.text) for s in ctx.segments)
        if content > budget or ctx.tokens > room:
            raise InputError(
                f"the chosen segments take {content} of the reader's tokens ({ctx.tokens} with gap markers); "
                f"the budget is {budget}, the reader's window leaves {room}"
            )
        return ctx

    def prompt(self, ctx: KeyContext) -> list[Any]:
        return self.reader.prompt(ctx.text, ctx.question)

    async def read(
        self,
        ctx: KeyContext,
        prompt: list[Any],
        max_new_tokens: int | None,
        started: float,
        *,
        rescored: int = 0,
        wait_s: float = 0.0,
        rescore_s: float = 0.0,
    ) -> Answer:
        """Generate the answer to ``prompt`` and time it: the one place ask and answer_with read."""
        pieces: list[str] = []
        first: float | None = None
        async for piece in self.generate(prompt, max_new_tokens, ctx.question):
            first = first if first is not None else time.perf_counter() - started
            pieces.append(piece)
        return Answer(
            text="".join(pieces),
            question=ctx.question,
            segments=ctx.segments,
            context_tokens=ctx.tokens,
            stream_tokens=ctx.stream_tokens,
            rescored=rescored,
            timings=Timings(
                wait_s=wait_s, rescore_s=rescore_s, first_token_s=first, total_s=time.perf_counter() - started
            ),
            model=self._pool.first.reader_model.name,
        )

    async def explain(self, alert: Alert) -> Alert:
        """``alert`` with the reader's answer to its question from its segment's text."""
        reader = self.reader
        max_new = self._config.max_new_tokens
        room = reader.room(alert.question, max_new)
        context = reader.encode(alert.text)
        keep = max(room, 0)
        text = reader.decode(context[-keep:]) if keep else ""  # the segment's end, where the reader can see it
        while keep and reader.count(text) > room:  # (a remote reader counts an estimate, not these ids)
            keep = min(keep - 1, keep * room // reader.count(text))
            text = reader.decode(context[-keep:]) if keep else ""
        prompt = reader.prompt(text, alert.question)
        pieces = [piece async for piece in self.generate(prompt, max_new, alert.question)]
        return msgspec.structs.replace(alert, explanation="".join(pieces).strip())

    async def generate(self, prompt: list[Any], max_new_tokens: int | None, question: str) -> AsyncIterator[str]:
        """Run the reader in a worker thread and pass its text pieces back as they come."""
        pool = self._pool
        replica = pool.first if len(pool.replicas) == 1 else pool.pick() or pool.first
        reader = replica.reader
        cfg = self._config
        stop = threading.Event()
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=64)
        max_new = max_new_tokens or cfg.max_new_tokens
        failure: list[BaseException] = []

        def run() -> None:
            pieces = reader.generate(
                prompt,
                max_new_tokens=max_new,
                temperature=cfg.temperature,
                seed=cfg.seed,
                stop=cfg.stop if cfg.stop is not None else reader.stop_for(question),
                should_stop=stop.is_set,
            )
            with closing(pieces):  # at once, not when collected: a remote reader's holds an HTTP response
                for piece in pieces:
                    if stop.is_set():
                        return
                    try:
                        anyio.from_thread.run(send.send, piece)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return

        async def produce() -> None:
            # runs in the engine's task group, so this generator holds no task group of its own
            # (an async generator may be abandoned mid-way; its consumer closing it stops the thread)
            with send:
                try:
                    await anyio.to_thread.run_sync(run, limiter=self._limiters[replica.index])
                except Exception as exc:
                    failure.append(exc)

        self._spawn(produce)
        try:
            async with receive:
                async for piece in receive:
                    yield piece
        finally:
            stop.set()
        if failure:
            raise failure[0]
