"""Feeding: what ``feed``/``flush``/``mark_input`` take, dispatched by type and taken in slices
under two locks (one per intake step, one per whole feed so each arrives whole), each step
logged before it returns and its segments queued, with backpressure between slices."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio

from ..errors import InputError
from ..persistence import InputMark
from .checks import check_ids, check_meta
from .intake import Intake
from .journal import Journal
from .queue import Pending, ScoringQueue

FEED_SLICE_CHARS = 1 << 16
"""Text is tokenised in slices of this many characters, with backpressure between slices."""
FEED_SLICE_TOKENS = 1 << 14
THREAD_TOKENIZE_CHARS = 1 << 14
"""Text longer than this is tokenised in a worker thread so the event loop stays responsive."""


class Feeder:
    def __init__(
        self,
        intake: Intake,
        journal: Journal,
        queue: ScoringQueue,
        counters: dict[str, int],
        vocab: int,
        closed: Callable[[], bool],
    ) -> None:
        self._intake = intake
        self._journal = journal
        self._queue = queue
        self._counters = counters
        self._vocab = vocab
        self._closed = closed
        self.step = anyio.Lock()  # held for one intake step (a feed slice, a flush, a snapshot)
        self.whole = anyio.Lock()  # held for a whole feed or flush: each arrives whole

    async def feed(self, data: str | bytes | Sequence[int] | Any) -> int:
        async with self.whole:
            return await self._feed(data)

    async def _feed(self, data: str | bytes | Sequence[int] | Any) -> int:
        intake, journal = self._intake, self._journal
        meta = None
        text = getattr(data, "text", None)
        if isinstance(text, str) and not isinstance(data, (str, bytes, bytearray, memoryview)):  # a TextChunk
            meta = getattr(data, "meta", None)
            data = text
            if meta is not None:
                check_meta(meta)  # it goes to segments, events and the log: refuse it before anything is taken
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = intake.bytes.decode(bytes(data))  # one decoder: a character split across feeds survives
            if not data and journal.state is not None:  # only part of a character: log its bytes
                async with self.step:
                    journal.log(intake.position, ())
                await journal.commit()
        elif isinstance(data, str):
            await self._end_bytes()
        if isinstance(data, str):
            taken = 0
            for start in range(0, len(data), FEED_SLICE_CHARS):
                taken += await self._take_text(data[start : start + FEED_SLICE_CHARS], meta)
            await journal.commit()
            return taken
        if isinstance(data, Sequence):
            ids = check_ids(data, self._vocab)
            await self._end_bytes()
            async with self.step:
                pos = intake.position
                head, ends, cut = intake.flush_text()  # text fed earlier comes first
                self._put(cut)
                journal.log(pos, head, ends, end_doc=True)
            for start in range(0, len(ids), FEED_SLICE_TOKENS):
                async with self.step:
                    pos = intake.position
                    self._put(intake.take_ids(ids[start : start + FEED_SLICE_TOKENS]))
                    journal.log(pos, ids[start : start + FEED_SLICE_TOKENS])
                await self.backpressure()
            await journal.commit()
            return len(head) + len(ids)
        raise InputError(f"feed() takes str, bytes, token ids or a TextChunk, not {type(data).__name__}")

    async def process(self, source: AsyncIterable[Any] | Iterable[Any], feed: Callable[[Any], Awaitable[int]]) -> int:
        """Every item of ``source`` through ``feed`` (the facade's, with its checks); the tokens."""
        total = 0
        if isinstance(source, AsyncIterable):
            async for item in source:
                total += await feed(item)
        else:
            for item in source:
                total += await feed(item)
        return total

    async def flush(self) -> int:
        """End the current segment (the tail becomes a short segment); the tokens released."""
        async with self.whole:  # (never between the slices of a feed)
            await self._end_bytes()  # an incomplete character at the end: U+FFFD, counted
            async with self.step:
                pos = self._intake.position
                ids, ends, cut = self._intake.flush_text()
                self._put(cut + self._intake.cut_tail())
                self._journal.log(pos, ids, ends, end_doc=True, cut=True)
                self._queue.wake()
        await self._journal.commit()
        return len(ids)

    async def mark(self, source: str, taken: int, *, complete: bool, digest: str) -> InputMark:
        """Log a mark of input ``source``, in order with the stream."""
        async with self.whole, self.step:
            mark = self._journal.mark(source, taken, complete=complete, digest=digest)
        await self._journal.commit()
        return mark

    async def _end_bytes(self) -> None:
        """Before text or ids that did not come as bytes: end a character the bytes fed before left
        incomplete (U+FFFD, counted in ``decode_stats.replaced``), so it cannot land after them."""
        if self._intake.bytes.held:
            await self._take_text(self._intake.bytes.final())

    async def _take_text(self, text: str, meta: dict[str, Any] | None = None) -> int:
        async with self.step:
            pos = self._intake.position
            if len(text) > THREAD_TOKENIZE_CHARS:
                ids, ends = await anyio.to_thread.run_sync(self._intake.tokenize, text)
            else:
                ids, ends = self._intake.tokenize(text)
            self._put(self._intake.take_text(text, meta, ids, ends))
            self._journal.log(pos, ids, ends, text=text, meta=meta)
        await self.backpressure()
        return len(ids)

    def _put(self, items: list[Pending]) -> None:
        self._counters["segments_cut"] += self._queue.put(items)

    async def backpressure(self) -> None:
        """Wait while scoring lags behind by more than ``max_pending_segments``."""
        await self._queue.backpressure(self._closed)
