"""The Segment record: one contiguous piece of the token stream, the unit of scoring."""

from __future__ import annotations

from typing import Any

import msgspec


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    """A contiguous run of stream tokens ``[start, end)``.

    ``seq`` numbers segments from 0 in stream order; ``start``/``end`` are absolute token
    offsets in the stream (with overlap, consecutive segments share tokens). ``meta`` holds
    what a source knows about the text (line and time ranges, log fields, chat roles);
    it is JSON-compatible so that it survives the segment log.
    """

    seq: int
    start: int
    end: int
    tokens: tuple[int, ...]
    meta: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.end - self.start != len(self.tokens):
            raise ValueError(f"segment {self.seq}: [{self.start}, {self.end}) does not hold {len(self.tokens)} tokens")

    @property
    def n_tokens(self) -> int:
        return self.end - self.start
