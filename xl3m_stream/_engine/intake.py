"""Intake: bytes and text decoded, tokenised and cut into segments, each with the rolling
question it is scored against; the recent tokens kept for those questions and for ``ask``.

Synchronous: the facade calls it under its intake lock, one step at a time, and logs each
step (journal.py) before queueing what it returns. ``apply`` redoes a logged step, through the
same :class:`~xl3m_stream.segmenter.Cutter` that ``LogReader`` and the evaluation replay with.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..config import EngineConfig
from ..persistence import FLAG_CUT, EngineSnapshot, StreamRecord
from ..segment import Segment
from ..segmenter import Cutter, Segmenter
from ..sources import DecodeStats, Utf8Decoder
from ..tokenizer import IncrementalTokenizer
from .queue import Pending


class Intake:
    """The stream's input side: ``position`` tokens taken so far, ``chars`` characters of text."""

    def __init__(self, config: EngineConfig, tokenizer: Any, decode_stats: DecodeStats) -> None:
        self.question_tokens = config.question_tokens
        self.tokenizer = tokenizer
        self.itok = IncrementalTokenizer(tokenizer)
        self.bytes = Utf8Decoder(decode_stats)
        self.decode_stats = decode_stats
        self.cutter = Cutter(Segmenter.for_config(config, tokenizer))
        self.segmenter = self.cutter.segmenter
        keep = max(config.question_tokens, config.local_window_tokens) + config.segment_tokens
        self.recent: deque[int] = deque(maxlen=keep)
        self.position = 0  # stream tokens consumed (== segmenter.position)
        self.chars = 0  # characters of text taken (the incremental tokenizer's offsets)
        self.rolling = True  # segments get the rolling question (False: an explicit one is set)

    # -- live intake: each call one step, logged by the caller ----------------------------
    def tokenize(self, text: str) -> tuple[list[int], list[int]]:
        """The tokens ``text`` makes final and their character ends (may run in a thread)."""
        return self.itok.push_with_offsets(text)

    def take_text(self, text: str, meta: dict[str, Any] | None, ids: list[int], ends: list[int]) -> list[Pending]:
        """Text and the tokens :meth:`tokenize` made of it."""
        self.chars += len(text)
        self.cutter.chunk(self.chars, meta)
        return self.take_ids(ids, ends)

    def take_ids(self, ids: Sequence[int], ends: Sequence[int] | None = None) -> list[Pending]:
        """Token ids (``ends``: their character ends, for ids of text) -> segments to score."""
        if not ids:
            return []
        history = self._history()
        base = self.position - len(history)
        segments = self.cutter.take(ids, ends)
        self.recent.extend(ids)
        self.position += len(ids)
        return self._pending(segments, history + list(ids), base)

    def flush_text(self) -> tuple[list[int], list[int], list[Pending]]:
        """The text held back by the tokenizer, made final: its ids, ends and segments."""
        ids, ends = self.itok.flush_with_offsets()
        return ids, ends, self.take_ids(ids, ends)

    def cut_tail(self) -> list[Pending]:
        """The pending tokens become a (short) segment."""
        history = self._history()
        return self._pending(self.cutter.cut(), history, self.position - len(history))

    def apply(self, rec: StreamRecord, ids: list[int], ends: list[int]) -> list[Pending]:
        """Redo one logged intake step (recovery): what feed/flush did, minus the tokenizer's work."""
        if rec.text:
            self.cutter.chunk(rec.chars, rec.meta)
        out = self.take_ids(ids, ends or None)
        if rec.flags & FLAG_CUT:
            out += self.cut_tail()
        return out

    def _history(self) -> list[int]:
        """The recent tokens the next segments' rolling questions may need: ``question_tokens``
        before the segmenter's pending tokens, and those (the next segment starts among them).
        A copy of that much only, so intake stays linear however long ``local_window_tokens``."""
        need = self.question_tokens + len(self.segmenter.pending)
        if need >= len(self.recent):
            return list(self.recent)
        return list(itertools.islice(reversed(self.recent), need))[::-1]

    def _pending(self, segments: list[Segment], window: list[int], base: int) -> list[Pending]:
        n = self.question_tokens
        out = []
        for seg in segments:
            rolling = None
            if self.rolling:  # the rolling question: the stream's last tokens before this segment
                hi = seg.start - base
                rolling = tuple(window[max(0, hi - n) : hi]) if hi > 0 else tuple(seg.tokens[:n])
            out.append(Pending(seg, rolling))
        return out

    # -- what ask sees --------------------------------------------------------------------
    def window(self, n: int) -> list[int]:
        """The stream's last ``n`` tokens, the ones the tokenizer holds back included."""
        return (list(self.recent)[-n:] + self.itok.pending_ids())[-n:]

    def last(self, n: int) -> list[int]:
        """The last ``n`` tokens taken (at most what is kept)."""
        return list(self.recent)[-n:] if n > 0 else []

    def tail_segment(self) -> Segment | None:
        """The unsegmented tail as a provisional segment (not stored), if it holds new tokens."""
        pending = list(self.segmenter.pending)
        tokens = pending + self.itok.pending_ids()
        if len(tokens) <= self.segmenter.carried:  # (overlap tokens already in the last segment)
            return None
        start = self.segmenter.position - len(pending)
        return Segment(seq=self.segmenter.next_seq, start=start, end=start + len(tokens), tokens=tuple(tokens))

    # -- state ----------------------------------------------------------------------------
    def restore(self, snap: EngineSnapshot) -> None:
        """Put intake where ``snap`` says it was (the log records after it come next)."""
        self.segmenter.restore(snap.segmenter)
        self.cutter.index.restore(snap.meta_index)
        self.itok.restore(snap.tokenizer)
        self.recent.extend(snap.recent)
        self.position = snap.position
        self.chars = snap.chars
        self.bytes.restore(snap.held)
        for name in DecodeStats.__struct_fields__:
            setattr(self.decode_stats, name, getattr(snap.decode, name))
