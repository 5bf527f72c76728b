"""Logs for :mod:`xl3m_stream.sources`: JSON-lines records (:func:`jsonl_records`, with the
nesting bound :data:`MAX_JSON_DEPTH`) and metadata of plain-text log lines
(:func:`parse_log_line`)."""

from __future__ import annotations

import logging
import re
import string
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from typing import Any

import msgspec

from .decode import DecodeStats, TextChunk
from .iterables import iterate

logger = logging.getLogger("xl3m_stream.sources")  # the public module's name, the one users configure

DEFAULT_LOG_TEMPLATE = "{ts} {level} {service} {message}\n"
"""How :func:`jsonl_records` renders a record for the model."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a JSON-lines record or in a
:class:`TextChunk`'s ``meta`` (real log records nest a few levels; a deeper one is hostile)."""


# --------------------------------------------------------------------------------------
# JSON logs

_TS_KEYS = ("ts", "timestamp", "time", "@timestamp")
_LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "log.level")
_SERVICE_KEYS = ("service", "service.name", "app", "component", "logger")


_INT_RANGE = (-(1 << 63), (1 << 64) - 1)
"""Integers a state directory's log (msgpack) can hold."""


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply dicts, lists and tuples nest in ``value`` (a scalar: 0, ``[1]``: 1).

    Counted without recursion, so any depth (or a reference cycle) is safe; counting stops
    once the depth exceeds ``limit`` (the result is then ``limit + 1``).
    """
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if level > depth:
            depth = level
            if depth > limit:
                return depth
        stack.extend((child, level + 1) for child in children)
    return depth


def _json_scalar(value: Any) -> Any:
    """A JSON scalar as is (an integer outside the 64-bit range as its decimal text); a nested
    object or array as compact JSON text."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return msgspec.json.encode(value).decode()


def _parse_template(template: str) -> list[tuple[str, str | None, str | None, str]]:
    """``string.Formatter`` parse of ``template``: (literal, field, conversion, spec) items."""
    items = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is not None and not field:
            raise ValueError(f"template {template!r}: positional '{{}}' fields are not supported, name them")
        items.append((literal, field, conversion, spec or ""))
    return items


def _render(items: list[tuple[str, str | None, str | None, str]], values: Mapping[str, Any]) -> str:
    """Fill a parsed template; a missing (absent, null or empty) field renders as nothing,
    and the spaces right after it are dropped too.

    So ``"{ts} {level} {service} {message}\\n"`` renders ``"ERROR api disk full\\n"`` for a
    record without a timestamp.
    """
    formatter = string.Formatter()
    out: list[str] = []
    strip_spaces = False
    for literal, field, conversion, spec in items:
        out.append(literal.lstrip(" \t") if strip_spaces else literal)
        strip_spaces = False
        if field is None:
            continue
        value = values.get(field)
        if value is None or value == "":
            strip_spaces = True
            continue
        out.append(formatter.format_field(formatter.convert_field(value, conversion), spec))
    return "".join(out)


async def jsonl_records(
    lines: AsyncIterable[TextChunk] | Iterable[Any],
    *,
    message_field: str = "message",
    template: str | Callable[[dict[str, Any]], str] = DEFAULT_LOG_TEMPLATE,
    stats: DecodeStats | None = None,
    warn_every: int = 1000,
) -> AsyncIterator[TextChunk]:
    """Turn JSON-lines log records (one per input chunk) into log lines for the model.

    Each line is decoded with ``msgspec.json.decode`` and must be an object with
    ``message_field``. The chunk's ``meta`` holds the record's other fields, with
    well-known names normalised: the first of ``ts``/``timestamp``/``time``/``@timestamp``
    becomes ``"ts"``, of ``level``/``severity``/``levelname``/``lvl``/``log.level`` becomes
    ``"level"`` (upper-cased), of ``service``/``service.name``/``app``/``component``/
    ``logger`` becomes ``"service"``; the rest keep their names, nested values as compact
    JSON text. ``"line"`` comes from the input chunk's meta (and wins over a record field
    of that name).

    The text is ``template`` (``str.format`` syntax) filled with ``message`` (the message
    field as a str, trailing newlines removed), ``ts``, ``level``, ``service``, ``line`` and
    any other field by its name in the record; a field the record lacks renders as nothing,
    and the spaces after it are dropped (so the default ``"{ts} {level} {service}
    {message}\\n"`` gives ``"ERROR api disk full\\n"`` for a record without a timestamp).
    ``template`` may also be a function of that dict of values that returns the text.

    An integer outside the 64-bit range is kept as its decimal text (a state directory's log
    holds 64-bit integers).

    Malformed lines (numbers out of range included), records nested deeper than
    :data:`MAX_JSON_DEPTH` levels, non-objects, records without ``message_field`` (or with it
    null) and over-long lines cut into pieces are skipped and counted in ``stats.skipped_records``;
    one in every ``warn_every`` of them, starting with the first, is logged at WARNING with
    its line number. Blank lines are skipped silently. Never raises on bad input.
    """
    if warn_every < 1:
        raise ValueError(f"warn_every must be >= 1, got {warn_every}")
    items = _parse_template(template) if isinstance(template, str) else []
    stats = stats if stats is not None else DecodeStats()
    skipped = 0

    def skip(line: Any, reason: str) -> None:
        nonlocal skipped
        skipped += 1
        stats.skipped_records += 1
        if (skipped - 1) % warn_every == 0:
            logger.warning(
                "line %s: skipped JSON record: %s (%d skipped so far; logging 1 in %d)",
                line,
                reason,
                skipped,
                warn_every,
            )

    async with aclosing(iterate(lines)) as chunks:
        async for chunk in chunks:
            in_meta = chunk.meta or {}
            line = in_meta.get("line")
            part = in_meta.get("part")
            if part is not None:  # a line too long to hold: cut by read_lines, undecodable
                if part == 1:
                    skip(line, "line too long")
                continue
            if not chunk.text.strip():
                continue
            try:
                record = msgspec.json.decode(chunk.text)
            except msgspec.DecodeError as exc:  # (a ValidationError too: a number out of range)
                skip(line, f"malformed JSON ({exc})")
                continue
            except RecursionError:  # deeper than the decoder goes: the bound below, reached early
                skip(line, f"nested deeper than {MAX_JSON_DEPTH} levels")
                continue
            if nesting_depth(record) > MAX_JSON_DEPTH:
                skip(line, f"nested deeper than {MAX_JSON_DEPTH} levels")
                continue
            if not isinstance(record, dict):
                skip(line, f"not a JSON object (a {type(record).__name__})")
                continue
            if message_field not in record:
                skip(line, f"no {message_field!r} field")
                continue
            message = record[message_field]
            if message is None:
                skip(line, f"{message_field!r} is null")
                continue
            message = message if isinstance(message, str) else str(_json_scalar(message))
            message = message.rstrip("\r\n")
            meta: dict[str, Any] = {}
            canonical: dict[str, str] = {}
            for canon, keys in (("ts", _TS_KEYS), ("level", _LEVEL_KEYS), ("service", _SERVICE_KEYS)):
                for key in keys:
                    if key in record and key != message_field:
                        canonical[key] = canon
                        break
            for key, value in record.items():
                if key == message_field:
                    continue
                value = _json_scalar(value)
                if canonical.get(key) == "level" and isinstance(value, str):
                    value = value.upper()
                meta[canonical.get(key, key)] = value
            if line is not None:
                meta["line"] = line
            values = {**{k: _json_scalar(v) for k, v in record.items()}, **meta, "message": message}
            if isinstance(template, str):
                try:
                    text = _render(items, values)
                except (ValueError, TypeError) as exc:  # a format spec that does not fit this value
                    skip(line, f"template {template!r} does not fit ({exc})")
                    continue
            else:
                text = template(values)
            yield TextChunk(text=text, meta=meta)


# --------------------------------------------------------------------------------------
# plain-text log lines

_TS = (
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?(?:Z|UTC|[+-]\d{2}(?::?\d{2})?))?)?"
)
_TS_RE = re.compile(rf"\s*(?:\[(?P<bts>{_TS})\]|(?P<ts>{_TS})(?=\s|$))")
_LEVEL_RE = re.compile(
    r"\s*[\[(<]?(?P<level>TRACE|DEBUG|INFO|WARNING|WARN|ERROR|FATAL|CRITICAL)[\])>]?:?(?=\s|$)",
    re.IGNORECASE,
)
_SERVICE_RE = re.compile(r"\s+[\[(]?(?P<service>[A-Za-z_][\w.\-/]*?)(?:\[\d+\])?[\])]?:?(?=\s+\S)")


def parse_log_line(line: str) -> dict[str, Any]:
    """Best-effort metadata of a plain-text log line, shaped like :func:`jsonl_records`' meta.

    Recognises an ISO-8601 timestamp at the start (``2024-05-01T12:00:00Z``,
    ``2024-05-01 12:00:00,123``, optionally in brackets) as ``"ts"``; a level (TRACE, DEBUG,
    INFO, WARN, WARNING, ERROR, FATAL, CRITICAL; optionally bracketed or followed by ``:``)
    right after it (any case), or at the start of the line (upper case only), as ``"level"``;
    and, when both are there, the word after the level as ``"service"`` (as in
    ``"<ts> <LEVEL> <service> <message>"``; brackets, a ``[pid]`` and a trailing ``:`` are
    stripped). Returns ``{}`` when nothing matches.
    """
    meta: dict[str, Any] = {}
    pos = 0
    m = _TS_RE.match(line)
    if m:
        meta["ts"] = m.group("bts") or m.group("ts")
        pos = m.end()
    m = _LEVEL_RE.match(line, pos)
    if m and (pos or m.group("level").isupper()):  # without a timestamp: "error handling..." is prose
        meta["level"] = m.group("level").upper()
        pos = m.end()
        if "ts" in meta:
            s = _SERVICE_RE.match(line, pos)
            if s:
                meta["service"] = s.group("service")
    return meta
