"""Incremental tokenization: text chunks in, token ids out, independent of where chunks were cut.

A stream arrives as arbitrary text chunks (network reads, file blocks, log lines). Tokenizing
each chunk on its own would change the tokens at every chunk edge ("hel" + "lo" is not
"hello"), and tokenizing the whole text again on every chunk is quadratic. This module emits
ids for a prefix of the text as soon as that prefix can no longer change, keeps the rest
pending, and guarantees that the ids depend only on the concatenated text.

How it decides where to cut
---------------------------
The emitted ids are the ids of the pending text encoded up to a *cut*. A cut position must be
a function of the text alone, never of how much text happened to be buffered, so every cut is
taken from a set of positions defined by content:

* **pieces mode** (the tokenizer has a pre-tokenizer that splits text, e.g. GPT-2/SmolLM2
  ``ByteLevel`` with its regex, ``Metaspace`` with ``split=True``, BERT's whitespace split):
  candidate cuts are the starts of pre-tokenizer pieces. A piece boundary is *stable* once at
  least ``_MARGIN`` characters follow it (the regexes in use look at most one or two characters
  past a piece, so text arriving later cannot move it).
* **lines mode** (no pre-tokenizer, e.g. Llama-2's ``Prepend("▁")`` normalizer with no
  pre-tokenizer, or a pre-tokenizer that never splits): candidate cuts are the positions right
  after a ``"\\n"``.

Each candidate ``c`` is then *verified* on a window defined by content alone,
``T[a:d]`` with ``a = max(c - _MARGIN, document start)`` and ``d = c + _MARGIN`` (or the
document end at flush): the cut is accepted only if
``encode(T[a:c]) + encode(T[c:d]) == encode(T[a:d])``. This rejects cuts where the tokenizer
has start-of-text effects (Metaspace/ByteLevel prefix spaces, Llama-2's ``Prepend``
normalizer). Which accepted candidate is actually used depends on buffering, but for a
tokenizer that tokenizes accepted cuts additively (every byte-level BPE, and every tokenizer
whose checks pass for the reason they appear to) any subset of accepted cuts gives the same
ids. For byte-level BPE tokenizers (GPT-2/SmolLM2 style) those ids are exactly the one-shot
``encode(text).ids`` (special-token strings encoded as text, no added BOS/EOS).

Bounded memory: forced cuts
---------------------------
If no accepted cut exists within ``max_pending_chars`` characters after the previous cut (a
10 MB line of one letter, binary garbage without spaces, a Llama-2-style tokenizer whose
newline cuts never verify), a *forced* cut is made at the last clean token boundary at or
before ``max_pending_chars`` characters, found by encoding exactly the next
``max_pending_chars + _MARGIN`` characters. The forced position is again a function of the
text alone (it depends only on the previous cut, which is itself content-determined), so
chunking invariance still holds, but the ids around a forced cut may differ from one-shot
tokenization (the text after it is tokenized as if it started a new text).
``forced_cuts`` counts them.

Limits (documented assumptions): pre-tokenizer regexes and normalizers must not look further
than ``_MARGIN`` characters ahead (true for GPT-2/Llama-3/SmolLM2 regexes, NFC/NFKC, lowercasing);
non-special added tokens with ``lstrip``/``rstrip`` that swallow long whitespace runs, or
normalizers with long-range effects, can break exact equality with one-shot encoding.

``flush()`` ends a document: everything pending is emitted, and later pushes start a new
document at the same absolute character offsets (nothing is carried across a flush).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Literal

import msgspec
from tokenizers import Encoding, Tokenizer

__all__ = [
    "CONTEXT_CHARS",
    "MIN_PENDING_CHARS",
    "IncrementalTokenizer",
    "TokenizerState",
    "backend_tokenizer",
    "data_tokenizer",
]

_MARGIN = 32
"""Characters that must follow a candidate cut before it is trusted (and verification context)."""

MIN_PENDING_CHARS = 4 * _MARGIN
"""Smallest allowed ``max_pending_chars``."""

CONTEXT_CHARS = _MARGIN
"""Characters before the consumed offset that a :class:`TokenizerState` must carry (cut verification)."""

_PROBE = "ab cd\nef gh. ij"
"""Text used once at construction to see whether the pre-tokenizer splits text into pieces."""


class TokenizerState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where an :class:`IncrementalTokenizer` stands: enough to resume it exactly.

    Made by :meth:`IncrementalTokenizer.state`, applied by :meth:`IncrementalTokenizer.restore`
    (the engine persists it in its snapshots). Offsets are absolute stream characters.
    """

    consumed: int
    """Characters already turned into ids (``chars_consumed``)."""
    doc_start: int
    """Where the current document began (the last ``flush``)."""
    context: str
    """Text just before ``consumed`` in the current document (its last ``CONTEXT_CHARS`` are used)."""
    pending: str
    """Text received but not yet emitted as ids."""


def backend_tokenizer(tokenizer: object) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` (itself, or a fast tokenizer's backend).

    Raises ``TypeError`` for anything else (a slow ``transformers`` tokenizer, a string...),
    because the streaming algorithms here need offsets and pre-tokenizer piece indices that
    only the Rust ``tokenizers`` library provides.
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise TypeError(
        "expected a tokenizers.Tokenizer or a transformers fast tokenizer (one with a "
        f"'.backend_tokenizer'), got {type(tokenizer).__module__}.{type(tokenizer).__qualname__}; "
        "load a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
    )


def data_tokenizer(tokenizer: object) -> Tokenizer:
    """A private copy of ``tokenizer``'s backend that encodes text as data, never as control:
    special-token strings (``<|im_start|>``...) in it become ordinary text tokens, and no
    BOS/EOS is added. Use it for anything that came from a stream."""
    return _private_copy(backend_tokenizer(tokenizer))


def _private_copy(backend: Tokenizer) -> Tokenizer:
    """A copy of ``backend`` configured so that stream text is data, never control.

    Special-token strings are encoded as ordinary text, nothing is truncated or padded, and
    the post-processor is removed (it adds BOS/EOS and can trim offsets, which would make
    offsets disagree with piece boundaries).
    """
    tok = Tokenizer.from_str(backend.to_str())
    tok.encode_special_tokens = True
    tok.no_truncation()
    tok.no_padding()
    tok.post_processor = None
    return tok


def _splits_into_pieces(tok: Tokenizer) -> bool:
    """Whether ``tok``'s pre-tokenizer splits text into several pieces (pieces mode)."""
    if tok.pre_tokenizer is None:
        return False
    words = {w for w in tok.encode(_PROBE, add_special_tokens=False).word_ids if w is not None}
    return len(words) > 1


class IncrementalTokenizer:
    """Turn a stream of text chunks into token ids that depend only on the concatenated text.

    ``push(text)`` returns the ids that became final; ``flush()`` returns the rest at the end
    of a document. ``*_with_offsets`` variants also return, per id, the absolute character
    END offset of that token in the whole stream (all documents concatenated), so callers can
    map tokens back to their source chunks or lines. See the module docstring for the cut
    rule, its guarantees and its limits.
    """

    def __init__(self, tokenizer: object, *, max_pending_chars: int = 1 << 16) -> None:
        backend = backend_tokenizer(tokenizer)
        if isinstance(max_pending_chars, bool) or not isinstance(max_pending_chars, int):
            raise TypeError(f"max_pending_chars must be an int, got {type(max_pending_chars).__name__}")
        if max_pending_chars < MIN_PENDING_CHARS:
            raise ValueError(f"max_pending_chars must be at least {MIN_PENDING_CHARS}, got {max_pending_chars}")
        self._tok = _private_copy(backend)
        self._max = max_pending_chars
        self._mode: Literal["pieces", "lines"] = "pieces" if _splits_into_pieces(self._tok) else "lines"
        self._parts: list[str] = []  # pending text, joined lazily (cheap appends)
        self._pending_len = 0
        self._base = 0  # absolute offset of the first pending char (= chars_consumed)
        self._doc_start = 0  # absolute offset where the current document began
        self._ctx = ""  # up to _MARGIN chars before _base in the current document (check context)
        self._failed: set[int] = set()  # absolute candidate cuts known to fail verification
        self._next_len = _MARGIN + 1  # do not look for cuts before this much text is pending
        self._forced = 0

    # -- public state -------------------------------------------------------------------

    @property
    def pending_text(self) -> str:
        """Text received but not yet emitted as ids."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def chars_consumed(self) -> int:
        """Absolute stream character offset up to which ids were emitted."""
        return self._base

    @property
    def forced_cuts(self) -> int:
        """How many times ``max_pending_chars`` forced a cut (ids there may differ from one-shot)."""
        return self._forced

    @property
    def mode(self) -> Literal["pieces", "lines"]:
        """``"pieces"`` (cuts at pre-tokenizer piece starts) or ``"lines"`` (cuts after newlines)."""
        return self._mode

    @property
    def max_pending_chars(self) -> int:
        """The bound on pending text before a forced cut."""
        return self._max

    def pending_ids(self) -> list[int]:
        """Provisional ids of :attr:`pending_text`, encoded with the same settings (text is data).

        Nothing is consumed. The ids equal what :meth:`flush` would return now unless the
        pending text is longer than ``max_pending_chars`` (then flush makes a forced cut). Use
        it to look at the not-yet-final tail of the stream (e.g. for a provisional last
        segment) without turning special-token strings in stream text into control tokens.
        """
        text = self.pending_text
        return self._encode(text).ids if text else []

    def state(self) -> TokenizerState:
        """The tokenizer's position and pending text, to resume it later with :meth:`restore`."""
        return TokenizerState(
            consumed=self._base, doc_start=self._doc_start, context=self._ctx, pending=self.pending_text
        )

    def restore(self, state: TokenizerState) -> None:
        """Continue from ``state`` (discarding what this tokenizer held): ids emitted from here on
        are those the tokenizer that made ``state`` would have emitted. Raises ValueError for an
        inconsistent state."""
        consumed, doc_start = state.consumed, state.doc_start
        if not isinstance(consumed, int) or not isinstance(doc_start, int) or not 0 <= doc_start <= consumed:
            raise ValueError(f"tokenizer state: need 0 <= doc_start <= consumed, got {doc_start}, {consumed}")
        if len(state.context) > consumed - doc_start:
            raise ValueError("tokenizer state: context is longer than the current document")
        pending = state.pending
        self._parts = [pending] if pending else []
        self._pending_len = len(pending)
        self._base = consumed
        self._doc_start = doc_start
        self._ctx = state.context[-_MARGIN:] if state.context else ""
        self._failed = set()
        self._next_len = _MARGIN + 1

    # -- streaming API ------------------------------------------------------------------

    def push(self, text: str) -> list[int]:
        """Add ``text`` to the stream; return the ids that became final (possibly none)."""
        return self.push_with_offsets(text)[0]

    def push_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Like :meth:`push`, also returning each id's absolute character end offset."""
        if not isinstance(text, str):
            raise TypeError(f"push() takes str, got {type(text).__name__}")
        if text:
            self._parts.append(text)
            self._pending_len += len(text)
        if self._pending_len < self._next_len:
            return [], []
        return self._drain(final=False)

    def flush(self) -> list[int]:
        """End the current document: return the ids of everything pending."""
        return self.flush_with_offsets()[0]

    def flush_with_offsets(self) -> tuple[list[int], list[int]]:
        """Like :meth:`flush`, also returning each id's absolute character end offset."""
        out: tuple[list[int], list[int]] = ([], [])
        if self._pending_len:
            out = self._drain(final=True)
        self._doc_start = self._base
        self._ctx = ""
        self._failed.clear()
        self._next_len = _MARGIN + 1
        return out

    # -- internals ----------------------------------------------------------------------

    def _encode(self, text: str) -> Encoding:
        return self._tok.encode(text, add_special_tokens=False)

    def _drain(self, *, final: bool) -> tuple[list[int], list[int]]:
        """Emit ids for as much pending text as the cut rule allows (all of it when ``final``)."""
        text = "".join(self._parts)
        pos = 0
        ids: list[int] = []
        ends: list[int] = []
        while pos < len(text):
            step = self._step(text, pos, final, ids, ends)
            if step == 0:
                break
            pos += step
        rest = text[pos:]
        self._parts = [rest] if rest else []
        self._pending_len = n = len(rest)
        # Retry only after the buffer grew by a fraction of itself: a buffer with no cut is
        # not re-encoded on every small push (amortised O(n)). Capped so that the forced-cut
        # decision, which needs exactly max + _MARGIN chars, is never postponed much.
        self._next_len = max(_MARGIN + 1, min(n + max(_MARGIN // 2, n // 2), self._max + _MARGIN))
        return ids, ends

    def _step(self, text: str, pos: int, final: bool, ids: list[int], ends: list[int]) -> int:
        """Make at most one cut in ``text[pos:]``; append its ids; return chars consumed (0: none)."""
        avail = len(text) - pos
        wlen = min(avail, self._max + _MARGIN)
        at_end = final and wlen == avail  # the window reaches the end of the document
        window = text[pos : pos + wlen]
        enc = self._encode(window)
        if at_end and wlen <= self._max:
            self._emit(enc.ids, [e for _, e in enc.offsets], text, pos, wlen, ids, ends)
            return wlen
        offsets = enc.offsets
        starts = [s for s, _ in offsets]
        tok_ends = [e for _, e in offsets]
        limit = min(wlen if at_end else wlen - _MARGIN, self._max)
        cut = self._find_cut(window, text, pos, enc, starts, tok_ends, limit, at_end) if limit > 0 else None
        if cut is not None:
            c, j = cut
            self._emit(enc.ids[:j], tok_ends[:j], text, pos, c, ids, ends)
            return c
        if wlen < self._max + _MARGIN and not at_end:
            return 0  # wait for more text
        # Forced cut: the last clean token boundary at or before max_pending_chars.
        self._forced += 1
        hi = min(self._max, wlen)
        j = bisect_right(starts, hi) - 1
        while j > 0:
            if starts[j] > 0 and starts[j] >= tok_ends[j - 1]:
                self._emit(enc.ids[:j], tok_ends[:j], text, pos, starts[j], ids, ends)
                return starts[j]
            j -= 1
        # No clean boundary (no tokens at all, or tokens straddling every character boundary):
        # cut at ``hi`` and encode that prefix on its own.
        sub = self._encode(window[:hi])
        self._emit(sub.ids, [e for _, e in sub.offsets], text, pos, hi, ids, ends)
        return hi

    def _find_cut(
        self,
        window: str,
        text: str,
        pos: int,
        enc: Encoding,
        starts: list[int],
        tok_ends: list[int],
        limit: int,
        at_end: bool,
    ) -> tuple[int, int] | None:
        """The latest verified candidate cut ``c <= limit`` as (chars, token index), or None."""
        base = self._base
        if self._mode == "pieces":
            word_ids = enc.word_ids
            j = bisect_right(starts, limit) - 1
            while j > 0:
                c = starts[j]
                if (
                    c > 0
                    and c >= tok_ends[j - 1]
                    and (word_ids[j] is None or word_ids[j] != word_ids[j - 1])
                    and base + c not in self._failed
                ):
                    if self._verify(base + c, text, pos, at_end):
                        return c, j
                    self._failed.add(base + c)
                j -= 1
            return None
        hi = limit
        while True:
            i = window.rfind("\n", 0, hi)
            if i < 0:
                return None
            c, hi = i + 1, i
            j = bisect_left(starts, c)
            if j > 0 and tok_ends[j - 1] > c:
                continue  # a token straddles the newline: not a token boundary
            if base + c in self._failed:
                continue
            if self._verify(base + c, text, pos, at_end):
                return c, j
            self._failed.add(base + c)

    def _verify(self, cut: int, text: str, pos: int, at_end: bool) -> bool:
        """Whether tokens are additive at absolute offset ``cut`` on a content-defined window."""
        base = self._base
        a = max(cut - _MARGIN, self._doc_start)
        d = cut + _MARGIN
        if at_end:
            d = min(d, base + len(text) - pos)
        left = self._ctx[len(self._ctx) - (base - a) :] if a < base else ""
        seg = left + text[pos + max(0, a - base) : pos + d - base]
        k = cut - a
        joint = self._encode(seg).ids
        return self._encode(seg[:k]).ids + self._encode(seg[k:]).ids == joint

    def _emit(
        self,
        new_ids: list[int],
        new_ends: list[int],
        text: str,
        pos: int,
        consumed: int,
        ids: list[int],
        ends: list[int],
    ) -> None:
        """Append ids/absolute ends for ``text[pos:pos+consumed]`` and advance past it."""
        base = self._base
        ids.extend(new_ids)
        ends.extend([base + e for e in new_ends])
        if consumed >= _MARGIN:
            self._ctx = text[pos + consumed - _MARGIN : pos + consumed]
        else:
            self._ctx = (self._ctx + text[pos : pos + consumed])[-_MARGIN:]
        self._base = base + consumed
        if self._failed:
            self._failed = {p for p in self._failed if p > self._base}
