"""Checks of what callers hand the engine, before anything is taken: one clear InputError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import InputError
from ..segment import Segment
from ..sources import MAX_JSON_DEPTH, nesting_depth
from .answer import check_max_new_tokens

__all__ = ["check_answer_args", "check_ids", "check_mark", "check_max_new_tokens", "check_meta", "check_rescore"]


def check_meta(meta: Any) -> None:
    """A TextChunk's metadata goes to segments, events and the log: JSON-compatible, bounded."""
    if not isinstance(meta, dict):
        raise InputError(f"TextChunk.meta must be a dict or None, not {type(meta).__name__}")
    if nesting_depth(meta) > MAX_JSON_DEPTH:  # (a reference cycle too)
        raise InputError(f"TextChunk.meta nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        msgspec.msgpack.encode(meta)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise InputError(f"TextChunk.meta must hold JSON-compatible values: {exc}") from None


def check_ids(data: Sequence[Any], vocab: int) -> list[int]:
    ids = []
    for i, x in enumerate(data):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
            raise InputError(f"token id #{i} is {x!r}: ids must be ints in [0, {vocab})")
        ids.append(int(x))
    return ids


def check_answer_args(segments: Sequence[Any], max_new_tokens: Any, vocab: int) -> None:
    """``answer_with``'s own arguments: segments of token ids inside the vocabulary."""
    check_max_new_tokens(max_new_tokens)
    for k, seg in enumerate(segments):
        if not isinstance(seg, Segment):
            raise InputError(f"segment #{k} is a {type(seg).__name__}, not a Segment")
        try:
            check_ids(seg.tokens, vocab)
        except InputError as exc:
            raise InputError(f"segment #{k} (seq {seg.seq}): {exc}") from None


def check_rescore(policy: Any) -> str:
    if policy not in ("auto", "always", "never"):
        raise InputError(f"rescore must be 'auto', 'always' or 'never', got {policy!r}")
    return policy


def check_mark(source: Any, taken: Any) -> None:
    if not isinstance(source, str) or not source:
        raise InputError("mark_input(): source must be a non-empty string")
    if isinstance(taken, bool) or not isinstance(taken, int) or taken < 0:
        raise InputError(f"mark_input(): taken must be an int >= 0, got {taken!r}")
