"""The passkey document of ``xl3m-stream demo``, produced in pieces (bounded memory at any length).

``passkey_document(length, seed=..., depth=..., count_tokens=..., count_stream=...)`` is the
context of ``make_sample("passkey", length=..., seed=..., depth=...)`` (same header, filler, key
line at the same depth, same length), built without ever holding it: the filler cycles five
sentences, so where each unit starts is arithmetic, and the whole document's tokens are counted
by streaming it through ``count_stream`` (for a byte-level BPE tokenizer an
:class:`~xl3m_stream.tokenizer.IncrementalTokenizer` counts exactly what a one-shot ``encode``
does). The sizing follows ``make_sample``'s steps one for one (the tokens per character of a
20k-character prefix, at most three full counts, the closest build kept), so the document is
character for character the same; ``tests/test_demo.py`` checks it against ``make_sample``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .evaluate import tasks

__all__ = ["PasskeyDocument", "passkey_document"]

_PERIOD = tuple(s + " " for s in tasks.PASSKEY_FILLER)
"""The filler units, in the order the passkey task cycles them."""
_PERIOD_TEXT = "".join(_PERIOD)
_PREFIX = [sum(len(u) for u in _PERIOD[:r]) for r in range(len(_PERIOD) + 1)]
BLOCK_CHARS = 1 << 16
"""Characters per piece produced while counting."""


def _cum(i: int) -> int:
    """Characters in the first ``i`` filler units (``_Pool.cum[i]``)."""
    q, r = divmod(i, len(_PERIOD))
    return q * _PREFIX[-1] + _PREFIX[r]


def _bisect_left(x: float) -> int:
    """The smallest ``i`` with ``_cum(i) >= x`` (``bisect_left`` over the cumulative counts)."""
    if x <= 0:
        return 0
    i = len(_PERIOD) * int(x // _PREFIX[-1])
    while i > 0 and _cum(i - 1) >= x:
        i -= 1
    while _cum(i) < x:
        i += 1
    return i


def _n_for_chars(chars: float) -> int:
    """``_Pool.n_for_chars``: the number of leading units whose characters come closest to ``chars``."""
    i = _bisect_left(chars)
    if i > 0 and chars - _cum(i - 1) < _cum(i) - chars:
        i -= 1
    return i


def _filler(start_unit: int, end_unit: int, *, drop_last: bool = False) -> Iterator[str]:
    """The text of filler units ``start_unit..end_unit-1`` in pieces (``drop_last``: without its last character)."""
    at, end = _cum(start_unit), _cum(end_unit) - (1 if drop_last and end_unit > start_unit else 0)
    period = len(_PERIOD_TEXT)
    big = _PERIOD_TEXT * (BLOCK_CHARS // period + 2)
    while at < end:
        offset = at % period
        take = min(BLOCK_CHARS, end - at)
        yield big[offset : offset + take]
        at += take


def _rstripped(pieces: Iterable[str]) -> Iterator[str]:
    """``"".join(pieces).rstrip()`` in pieces: trailing whitespace is held back until text follows it."""
    held = ""
    for piece in pieces:
        stripped = piece.rstrip()
        if not stripped:
            held += piece
            continue
        yield held + stripped
        held = piece[len(stripped) :]


def _rechunked(pieces: Iterable[str], size: int) -> Iterator[str]:
    """The same text in pieces of exactly ``size`` characters (the last one shorter)."""
    buf: list[str] = []
    have = 0
    for piece in pieces:
        while piece:
            take = piece[: size - have]
            piece = piece[len(take) :]
            buf.append(take)
            have += len(take)
            if have == size:
                yield "".join(buf)
                buf, have = [], 0
    if have:
        yield "".join(buf)


@dataclass(frozen=True)
class PasskeyDocument:
    """A passkey document: header, filler, the key line at ``depth``, more filler."""

    question: str
    answer: str
    """The pass key."""
    depth: float
    tokens: int
    """Its tokens, as ``count_stream`` counted them."""
    chars: int
    header: str
    needle: str
    units: int
    """Filler units in the document."""
    key_at: int
    """Filler units before the key line."""

    def pieces(self, size: int = BLOCK_CHARS) -> Iterator[str]:
        """The document's text in pieces of ``size`` characters (the last one shorter)."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        return _rechunked(_rstripped(self._parts()), size)

    def _parts(self) -> Iterator[str]:
        # tasks._assemble with line=True: the filler before the key loses its trailing space and
        # ends its line; the key line; the rest of the filler (the whole is rstripped by pieces())
        yield self.header
        yield from _filler(0, self.key_at, drop_last=True)
        if self.key_at:
            yield "\n"
        yield self.needle + "\n"
        yield from _filler(self.key_at, self.units)


def _document(spec: tasks._Spec, needle: str, depth: float, units: int) -> PasskeyDocument:
    key_at = min(units, _bisect_left(depth * _cum(units)))
    return PasskeyDocument(
        question=spec.question,
        answer=spec.answers[0],
        depth=depth,
        tokens=0,
        chars=0,
        header=spec.header,
        needle=needle,
        units=units,
        key_at=key_at,
    )


def passkey_document(
    length: int,
    *,
    seed: int,
    depth: float | None = None,
    count_tokens: Callable[[str], int],
    count_stream: Callable[[Iterable[str]], int],
) -> PasskeyDocument:
    """The context of ``make_sample("passkey", length=length, seed=seed, depth=depth, ...)``,
    to be produced in pieces. ``count_tokens`` counts a short text (the 20k-character sample);
    ``count_stream`` counts the tokens of a text given in pieces, the same way."""
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    rng = random.Random(f"xl3m-eval/passkey/{seed}")
    if depth is None:
        depth = rng.random()
    spec = tasks._passkey(rng, depth, ())
    first = [next(spec.units) for _ in range(2 * len(_PERIOD))]
    if first != list(_PERIOD) * 2 or len(spec.inserts) != 1 or not isinstance(spec.inserts[0].text, str):
        raise RuntimeError("the passkey task is no longer a cycle of filler sentences with one key line")
    needle = spec.inserts[0].text
    if any(c.isdigit() for c in spec.header + _PERIOD_TEXT):  # make_sample's uniqueness check holds
        raise RuntimeError("the passkey filler holds digits")

    # tasks._build, step for step, with the filler's cumulative counts computed
    sample_n = _n_for_chars(tasks._SAMPLE_CHARS)
    sample_text = "".join(_filler(0, sample_n))
    tpc = max(count_tokens(sample_text), 1) / max(len(sample_text), 1)
    fixed = count_tokens(spec.header + needle)
    n = _n_for_chars(max(0.0, (length - fixed) / tpc))
    best: tuple[int, PasskeyDocument] | None = None
    tried: set[int] = set()
    for _ in range(3):
        doc = _document(spec, needle, depth, n)
        chars = 0

        def measured(pieces: Iterable[str]) -> Iterator[str]:
            nonlocal chars
            for piece in pieces:
                chars += len(piece)
                yield piece

        tokens = count_stream(measured(doc.pieces()))
        doc = PasskeyDocument(**{**doc.__dict__, "tokens": tokens, "chars": chars})
        tried.add(n)
        if best is None or abs(tokens - length) < best[0]:
            best = (abs(tokens - length), doc)
        if abs(tokens - length) <= tasks._TOLERANCE * length or (_cum(n) == 0 and tokens >= length):
            break
        body_tokens = tokens - fixed
        if _cum(n) > 0 and body_tokens > 0:
            tpc = body_tokens / _cum(n)
        new_n = _n_for_chars(max(0.0, _cum(n) + (length - tokens) / tpc))
        if new_n == n or new_n in tried:
            break
        n = new_n
    assert best is not None
    return best[1]
