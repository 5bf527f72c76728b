"""Cut a token-id stream into fixed-size (optionally line-aware) segments.

Segments are the unit of scoring, so their layout must depend only on the token stream, never
on how the ids were delivered: pushing the same ids in any pieces yields the same segments.

Layout rules
------------
* Every segment has ``length`` tokens, except a tail emitted by :meth:`Segmenter.flush` and,
  in line-aware mode, segments that end early at a line end (see below).
* Consecutive segments share ``overlap`` tokens: ``next.start == prev.end - overlap``. The one
  exception is after a flushed tail shorter than ``overlap`` (only possible when that tail is
  the first segment): then the next segment repeats the whole tail (``carried`` tells how many
  pending tokens are already covered).
* ``seq`` counts from ``start_seq``; ``start``/``end`` are absolute stream offsets from
  ``start_pos``.

Line-aware cutting (``boundary_ids`` given, e.g. :func:`newline_token_ids`)
------------------------------------------------------------------------
Once ``length`` tokens are available, the segment ends right after the LAST boundary token at
a position that leaves the segment at least ``lo = max(ceil(min_fill * length), carried + 1)``
tokens long (``carried`` = overlap tokens repeated from the previous segment, so a segment
always holds new tokens). If there is none, the segment is cut hard at ``length`` tokens:
a line longer than that window must be split. Precisely:

* a non-tail segment that does not end with a boundary token has exactly ``length`` tokens
  and holds no boundary token at its positions ``lo - 1 .. length - 1``;
* a segment that ends with a boundary token has ``lo <= len <= length`` tokens, and no
  boundary token follows it within the first ``length`` tokens from its start;
* hence, if no line (tokens up to and including a boundary token) is longer than
  ``length - lo + 1`` tokens, every non-tail segment ends at a line end.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .segment import Segment, merge_meta
from .tokenizer import backend_tokenizer

if TYPE_CHECKING:
    from .config import EngineConfig

__all__ = ["Cutter", "MetaIndex", "MetaIndexState", "Segmenter", "SegmenterState", "newline_token_ids"]


class SegmenterState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a :class:`Segmenter` stands (see :meth:`Segmenter.state` / :meth:`Segmenter.restore`)."""

    next_seq: int
    start: int
    """Absolute stream offset of ``pending[0]``."""
    pending: list[int]
    """Tokens received but not yet in a segment, preceded by the carried overlap."""
    carried: int
    """How many leading ``pending`` tokens are already in an earlier segment."""


class MetaIndexState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The contents of a :class:`MetaIndex` (see :meth:`MetaIndex.state` / :meth:`MetaIndex.restore`)."""

    tokens: int
    chunks: list[tuple[int, dict[str, Any] | None]]
    """(character end, metadata) of chunks not yet fully tokenised."""
    runs: list[tuple[int, int, dict[str, Any] | None]]
    """(first token, end token, metadata) of the tokens a future segment may still cover."""


def newline_token_ids(tokenizer: object) -> frozenset[int]:
    """Ids whose decoded text contains ``"\\n"`` (the boundary ids for line-aware cutting).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer. Every id
    is decoded on its own by the tokenizer's decoder, so byte-level (``Ċ``), SentencePiece
    byte-fallback (``<0x0A>``) and plain ``"\\n"`` vocabularies are all handled (a 50k
    vocabulary takes about 0.1 s; ``decode_batch`` is slower here and would switch on the Rust
    thread pool, which makes ``tokenizers`` warn after a later ``fork``).
    """
    tok = backend_tokenizer(tokenizer)
    decode = tok.decode
    ids = tok.get_vocab(with_added_tokens=True).values()  # not assumed contiguous
    return frozenset(i for i in ids if "\n" in decode([i], skip_special_tokens=False))


class Segmenter:
    """Cut a stream of token ids into :class:`~xl3m_stream.segment.Segment` records.

    ``push(ids)`` returns the segments completed by ``ids``; ``flush()`` returns the partial
    tail. The layout depends only on the concatenated ids (see the module docstring).
    """

    @classmethod
    def for_config(cls, config: EngineConfig, tokenizer: object) -> Segmenter:
        """The segmenter an engine with ``config`` (an :class:`~xl3m_stream.EngineConfig`) cuts
        its stream with: the one place the engine and the evaluation build it from settings."""
        boundary = newline_token_ids(tokenizer) if config.segment_cut == "lines" else None
        return cls(config.segment_tokens, overlap=config.overlap_tokens, boundary_ids=boundary)

    def __init__(
        self,
        length: int,
        *,
        overlap: int = 0,
        boundary_ids: frozenset[int] | None = None,
        min_fill: float = 0.5,
        start_seq: int = 0,
        start_pos: int = 0,
    ) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < length:
            raise ValueError(f"overlap must be an int with 0 <= overlap < length ({length}), got {overlap!r}")
        if isinstance(min_fill, bool) or not isinstance(min_fill, (int, float)) or not 0 < min_fill <= 1:
            raise ValueError(f"min_fill must be a number with 0 < min_fill <= 1, got {min_fill!r}")
        if isinstance(start_seq, bool) or not isinstance(start_seq, int) or start_seq < 0:
            raise ValueError(f"start_seq must be an int >= 0, got {start_seq!r}")
        if isinstance(start_pos, bool) or not isinstance(start_pos, int) or start_pos < 0:
            raise ValueError(f"start_pos must be an int >= 0, got {start_pos!r}")
        self._length = length
        self._overlap = overlap
        self._boundary = frozenset(boundary_ids) if boundary_ids is not None else None
        # (the epsilon keeps 0.1 * 30 == 3.0000000000000004 from meaning 4 tokens)
        self._min_len = max(1, math.ceil(min_fill * length - 1e-9))
        self._next_seq = start_seq
        # Pending tokens are self._buf[self._head:]; the list is compacted now and then so
        # that cutting many segments from one big push does not shift the list each time.
        self._buf: list[int] = []
        self._head = 0
        self._buf_start = start_pos  # absolute offset of self._buf[self._head]
        self._carried = 0  # leading pending tokens already in the previous segment
        # Absolute offsets of boundary tokens, ascending (line-aware mode only); entries before
        # self._bhead are already behind the pending tokens (dropped lazily, like self._buf).
        self._bpos: list[int] = []
        self._bhead = 0

    # -- public state -------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Tokens per (non-tail) segment."""
        return self._length

    @property
    def overlap(self) -> int:
        """Tokens each segment repeats from the end of the previous one."""
        return self._overlap

    @property
    def pending(self) -> tuple[int, ...]:
        """Tokens received but not yet in a segment, preceded by the carried overlap."""
        return tuple(self._buf[self._head :])

    @property
    def carried(self) -> int:
        """How many leading tokens of :attr:`pending` are already in an earlier segment."""
        return self._carried

    @property
    def position(self) -> int:
        """Absolute stream offset just after the last token received."""
        return self._buf_start + len(self._buf) - self._head

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next segment will get."""
        return self._next_seq

    def state(self) -> SegmenterState:
        """The pending tokens and counters, to resume later with :meth:`restore`."""
        return SegmenterState(
            next_seq=self._next_seq, start=self._buf_start, pending=self._buf[self._head :], carried=self._carried
        )

    def restore(self, state: SegmenterState) -> None:
        """Continue from ``state`` (made by a segmenter with the same length, overlap and boundary
        ids), discarding what this one held. Raises ValueError for an inconsistent state."""
        pending = list(state.pending)
        for name in ("next_seq", "start", "carried"):
            value = getattr(state, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"segmenter state: {name} must be an int >= 0, got {value!r}")
        if len(pending) >= self._length:
            raise ValueError(f"segmenter state: {len(pending)} pending tokens, but segments hold {self._length}")
        if state.carried > min(len(pending), self._overlap):
            raise ValueError(f"segmenter state: carried={state.carried} exceeds the overlap or the pending tokens")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in pending):
            raise ValueError("segmenter state: pending tokens must be ints >= 0")
        self._next_seq = state.next_seq
        self._buf = pending
        self._head = 0
        self._buf_start = state.start
        self._carried = state.carried
        boundary = self._boundary
        self._bpos = [state.start + i for i, t in enumerate(pending) if t in boundary] if boundary is not None else []
        self._bhead = 0

    # -- streaming API ------------------------------------------------------------------

    def push(self, ids: Sequence[int]) -> list[Segment]:
        """Append ``ids`` to the stream; return the segments they completed, in order."""
        if not ids:
            return []
        if self._boundary is not None:
            boundary = self._boundary
            offset = self.position
            self._bpos.extend([offset + i for i, t in enumerate(ids) if t in boundary])
        self._buf.extend(ids)
        out: list[Segment] = []
        while len(self._buf) - self._head >= self._length:
            out.append(self._cut(self._choose_end()))
        self._compact()
        return out

    def flush(self) -> list[Segment]:
        """Emit the pending tail as a final, shorter segment if it holds uncovered tokens.

        The stream may continue afterwards: the next segment overlaps the tail as usual.
        """
        if len(self._buf) - self._head <= self._carried:
            return []
        segment = self._cut(len(self._buf) - self._head)
        self._compact()
        return [segment]

    # -- internals ----------------------------------------------------------------------

    def _choose_end(self) -> int:
        """Tokens in the next segment (``length`` tokens are pending)."""
        if self._boundary is None:
            return self._length
        lo = max(self._min_len, self._carried + 1)
        start = self._buf_start
        # The last boundary token at segment index lo-1 .. length-1.
        i = bisect_right(self._bpos, start + self._length - 1, lo=self._bhead) - 1
        if i >= self._bhead and self._bpos[i] >= start + lo - 1:
            return self._bpos[i] - start + 1
        return self._length

    def _cut(self, size: int) -> Segment:
        """Emit the first ``size`` pending tokens as a segment; keep the overlap pending."""
        head = self._head
        start = self._buf_start
        segment = Segment(
            seq=self._next_seq, start=start, end=start + size, tokens=tuple(self._buf[head : head + size])
        )
        self._next_seq += 1
        keep = min(self._overlap, size)
        drop = size - keep
        self._head = head + drop
        self._buf_start = start + drop
        self._carried = keep
        if self._bpos:
            self._bhead = bisect_left(self._bpos, self._buf_start, lo=self._bhead)
        return segment

    def _compact(self) -> None:
        """Drop the consumed prefixes of the buffers (once per call, not once per segment)."""
        if self._head:
            del self._buf[: self._head]
            self._head = 0
        if self._bhead:
            del self._bpos[: self._bhead]
            self._bhead = 0


class MetaIndex:
    """Which source chunk each stream token came from, so segments can carry its metadata.

    The engine reports chunks as they are fed (their end offset in the stream's text and their
    metadata) and tokens as they become final (with each token's character end offset).
    ``meta_for(start, end)`` merges the metadata of the chunks a token range came from (see
    :func:`~xl3m_stream.segment.merge_meta`). Memory stays bounded: ``forget_before`` drops
    what no future segment can need.
    """

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, dict[str, Any] | None]] = deque()  # (char_end, meta), not yet tokenised
        self._runs: deque[tuple[int, int, dict[str, Any] | None]] = deque()  # (token_start, token_end, meta)
        self._tokens = 0

    def add_chunk(self, char_end: int, meta: dict[str, Any] | None) -> None:
        self._chunks.append((char_end, meta))

    def add_tokens(self, char_ends: Sequence[int]) -> None:
        """Tokens that became final, in order, with each one's (ascending) character end offset.

        A token belongs to the chunk holding its last character.
        """
        done = 0
        while done < len(char_ends):
            if not self._chunks:
                self._add_run(len(char_ends) - done, None)
                return
            chunk_end, meta = self._chunks[0]
            upto = bisect_right(char_ends, chunk_end, lo=done)
            if upto > done:
                self._add_run(upto - done, meta)
                done = upto
            if done < len(char_ends):
                self._chunks.popleft()  # tokens past this chunk's end belong to later chunks

    def add_unattributed(self, count: int) -> None:
        """Tokens fed as ids (no text, so no source metadata)."""
        if count:
            self._add_run(count, None)

    def _add_run(self, count: int, meta: dict[str, Any] | None) -> None:
        if self._runs and self._runs[-1][2] is meta and self._runs[-1][1] == self._tokens:
            start, _, _ = self._runs.pop()
        else:
            start = self._tokens
        self._tokens += count
        self._runs.append((start, self._tokens, meta))

    def meta_for(self, start: int, end: int) -> dict[str, Any] | None:
        metas = [m for s, e, m in self._runs if e > start and s < end and m]
        return merge_meta(metas)

    def forget_before(self, token_pos: int) -> None:
        while self._runs and self._runs[0][1] <= token_pos:
            self._runs.popleft()

    def state(self) -> MetaIndexState:
        """The index's contents, to resume later with :meth:`restore`."""
        return MetaIndexState(tokens=self._tokens, chunks=list(self._chunks), runs=list(self._runs))

    def restore(self, state: MetaIndexState) -> None:
        """Replace the index's contents with ``state``."""
        if not isinstance(state.tokens, int) or state.tokens < 0:
            raise ValueError(f"meta index state: tokens must be an int >= 0, got {state.tokens!r}")
        if any(not 0 <= s <= e <= state.tokens for s, e, _ in state.runs):
            raise ValueError("meta index state: a run lies outside the tokens counted")
        self._chunks = deque((end, meta) for end, meta in state.chunks)
        self._runs = deque((s, e, meta) for s, e, meta in state.runs)
        self._tokens = state.tokens


class Cutter:
    """Token ids (and the text chunks they came from) -> segments carrying their source metadata.

    The one path from ids to segments: the engine's intake takes live input through it, and
    recovery, :class:`~xl3m_stream.persistence.LogReader` and the evaluation replay logged or
    prepared ids through it, so they cannot cut differently. ``take`` and ``cut`` are the two
    moves of a live stream; ``apply`` is one logged intake step (both, in that order).
    """

    def __init__(self, segmenter: Segmenter, index: MetaIndex | None = None) -> None:
        """``segmenter`` at the stream's first token: the index counts tokens from 0, and a
        segment's metadata is looked up by its offsets (restore both to move on together)."""
        if index is None and segmenter.position != 0:
            raise ValueError(f"a Cutter's segmenter starts at stream offset 0, not {segmenter.position}")
        self.segmenter = segmenter
        self.index = index if index is not None else MetaIndex()

    def chunk(self, char_end: int, meta: dict[str, Any] | None) -> None:
        """A text chunk ends at character ``char_end`` of the stream's text, with ``meta``."""
        self.index.add_chunk(char_end, meta)

    def take(self, ids: Sequence[int], ends: Sequence[int] | None = None) -> list[Segment]:
        """The segments ``ids`` complete. ``ends``: each token's character end offset (tokens
        of text, attributed to their chunks); None: ids fed as ids (no source metadata)."""
        if not ids:
            return []
        if ends:
            self.index.add_tokens(ends)
        else:
            self.index.add_unattributed(len(ids))
        return self._attach(self.segmenter.push(ids))

    def cut(self) -> list[Segment]:
        """End the current segment: the pending tokens become a (short) tail segment."""
        return self._attach(self.segmenter.flush())

    def apply(
        self,
        ids: Sequence[int],
        ends: Sequence[int],
        *,
        chunk: tuple[int, dict[str, Any] | None] | None = None,
        cut: bool = False,
    ) -> list[Segment]:
        """Redo one logged intake step: a text chunk (``chunk``), its tokens, a cut."""
        if chunk is not None:
            self.chunk(*chunk)
        out = self.take(ids, ends or None)
        if cut:
            out += self.cut()
        return out

    def _attach(self, segments: list[Segment]) -> list[Segment]:
        out = []
        for seg in segments:
            meta = self.index.meta_for(seg.start, seg.end)
            out.append(msgspec.structs.replace(seg, meta=meta) if meta is not None else seg)
        self.index.forget_before(self.segmenter.position - len(self.segmenter.pending))
        return out
