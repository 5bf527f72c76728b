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


def merge_meta(metas: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The metadata of a segment made of several source chunks (log lines, chat turns...).

    ``line`` and ``ts`` become ranges (``line_start``/``line_end``, ``ts_start``/``ts_end``);
    any other field keeps its value when every chunk agrees, else the distinct values in
    order of appearance (at most 16). Chunks without metadata are skipped.
    """
    metas = [m for m in metas if m]
    if not metas:
        return None
    out: dict[str, Any] = {}
    lines = [m["line"] for m in metas if isinstance(m.get("line"), int)]
    if lines:
        out["line_start"], out["line_end"] = min(lines), max(lines)
    stamps = [str(m["ts"]) for m in metas if m.get("ts") not in (None, "")]
    if stamps:
        out["ts_start"], out["ts_end"] = stamps[0], stamps[-1]
    values: dict[str, list[Any]] = {}
    for m in metas:
        for key, value in m.items():
            if key in ("line", "ts", "part"):
                continue
            seen = values.setdefault(key, [])
            if value not in seen and len(seen) < 16:
                seen.append(value)
    for key, seen in values.items():
        out[key] = seen[0] if len(seen) == 1 else seen
    return out
