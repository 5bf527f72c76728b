"""The bounded segment store: keeps the stream segments most relevant to the question.

XL3M answers a question about an unbounded stream with a short-window reader by keeping,
out of all segments seen so far, the few that are most relevant to the question (the
"key context") and splicing them back together in stream order. This module is that
keeper. Each arriving segment is *offered* with its relevance score; the store holds at
most ``max_segments`` segments and, optionally, at most ``max_tokens`` tokens, and when
an offer would break a bound it evicts the least relevant entries. On demand,
:meth:`SegmentStore.select` picks the best entries that fit a token budget and returns
them in stream order.

Ranking is by the key ``(score, seq)``: a higher score is more relevant, and among equal
scores the newer segment (higher ``seq``) ranks higher, so the older one is evicted first.
Every operation is deterministic: the same operations in the same order give the same
state. The state round-trips through :class:`StoreSnapshot`, a msgspec Struct that
encodes with ``msgspec.json`` or ``msgspec.msgpack`` (never pickle).

The store is plain synchronous code and is not thread-safe; the engine owns one store for
the whole stream (each entry says which question its score was taken against) and mutates
it from one task at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import msgspec
from sortedcontainers import SortedDict, SortedList

from .segment import Segment

__all__ = ["Offer", "SegmentStore", "StoreEntry", "StoreSnapshot"]


class StoreEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A segment held by the store, with the relevance it was ranked by.

    ``score`` ranks entries (higher = more relevant). ``question_id`` names the question the
    score was taken against, so a caller can tell which entries to re-score when the question
    changes. ``scores`` carries per-measure details (entropy, nll, ...) for reports and
    debugging; the store never ranks by them.
    """

    segment: Segment
    score: float
    question_id: int = 0
    scores: dict[str, float] = {}


class Offer(msgspec.Struct, frozen=True):
    """What :meth:`SegmentStore.offer` did.

    ``kept`` says whether the offered segment is now in the store. ``evicted`` lists the
    entries removed to make room for it, least relevant first; it is empty when the offer
    was not kept (a rejected offer never changes the store).
    """

    kept: bool
    evicted: list[StoreEntry]


class StoreSnapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole state of a :class:`SegmentStore`: its bounds and its entries in stream order.

    Encode it with ``msgspec.json.encode`` or ``msgspec.msgpack.encode`` and decode it with
    ``type=StoreSnapshot``; :meth:`SegmentStore.from_snapshot` validates it before use.
    """

    max_segments: int
    max_tokens: int | None = None
    entries: list[StoreEntry] = []


def _check_bound(name: str, value: object, *, optional: bool) -> None:
    """Raise ValueError unless ``value`` is a positive int (or None where ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")


def _check_score(score: float, what: str) -> float:
    """Return ``score`` as a float; a NaN or infinite score cannot be ranked, so reject it."""
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"{what}: score must be finite, got {score!r}")
    return value


def _check_details(details: Mapping[str, float] | None, what: str) -> dict[str, float]:
    """Copy per-measure details as ``{str: finite float}``.

    Non-finite values are rejected because JSON cannot carry them (msgspec writes NaN as
    ``null``), and a snapshot that cannot be read back is worse than an early error.
    """
    if not details:
        return {}
    out: dict[str, float] = {}
    for name, value in details.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: score detail names must be str, got {name!r}")
        fvalue = float(value)
        if not math.isfinite(fvalue):
            raise ValueError(f"{what}: score detail {name!r} must be finite, got {value!r}")
        out[name] = fvalue
    return out


def select_best(
    ranked: Iterable[StoreEntry],
    budget_tokens: int,
    *,
    exclude_from: int | None = None,
    cost: Callable[[StoreEntry], int] | None = None,
) -> list[StoreEntry]:
    """Greedy key-context selection over entries given best-first; result in stream order.

    An entry that does not fit in what is left of the budget is skipped and smaller, less
    relevant ones are still tried. ``cost``: what an entry takes from the budget (default its
    segment's ``n_tokens``; the engine counts the reader's tokens of its text). Used by
    :meth:`SegmentStore.select`, and by the engine to consider a provisional entry (the
    stream's unsegmented tail) beside the stored ones.
    """
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int) or budget_tokens < 0:
        raise ValueError(f"budget_tokens must be an int >= 0, got {budget_tokens!r}")
    left = budget_tokens
    chosen: list[StoreEntry] = []
    for entry in ranked:
        if left == 0:  # every entry costs >= 1 token: nothing more can fit
            break
        if exclude_from is not None and entry.segment.start >= exclude_from:
            continue
        take = entry.segment.n_tokens if cost is None else cost(entry)
        if take <= left:
            chosen.append(entry)
            left -= take
    chosen.sort(key=lambda e: e.segment.seq)
    return chosen


def rank_key(entry: StoreEntry) -> tuple[float, int]:
    """Ranking key, ascending = less relevant first: ties on score rank the older segment lower."""
    return (entry.score, entry.segment.seq)


class SegmentStore:
    """A bounded set of scored segments: keeps the most relevant, iterates in stream order.

    Bounds: at most ``max_segments`` entries (>= 1) and, if ``max_tokens`` is given, at most
    that many tokens in total (>= 1). An entry costs its segment's ``n_tokens``; empty
    segments are refused, since they carry no context.

    Eviction rule: when adding an offered segment breaks a bound, the least relevant
    entries (lowest ``(score, seq)``, so on equal scores the older goes first) are evicted
    one at a time until the bounds hold; if the offered segment itself would be evicted
    on the way, it is rejected instead and nothing is evicted. In particular a segment
    longer than ``max_tokens`` is never kept.

    Cost: entries are indexed twice, by ``seq`` (a SortedDict, for stream order) and by
    ``(score, seq)`` (a SortedList, for ranking), so an offer costs O(log n) plus
    O(log n) per evicted entry. A rejected offer under a token bound walks at most as many
    low-ranked entries as the offered segment has tokens (each entry holds >= 1 token),
    never the whole store.
    """

    def __init__(self, max_segments: int, max_tokens: int | None = None) -> None:
        _check_bound("max_segments", max_segments, optional=False)
        _check_bound("max_tokens", max_tokens, optional=True)
        self._max_segments = max_segments
        self._max_tokens = max_tokens
        self._by_seq: SortedDict = SortedDict()  # seq -> StoreEntry, stream order
        self._ranked: SortedList = SortedList()  # (score, seq), least relevant first
        self._tokens = 0

    # --- bounds and size --------------------------------------------------------------

    @property
    def max_segments(self) -> int:
        """Most entries the store holds."""
        return self._max_segments

    @property
    def max_tokens(self) -> int | None:
        """Most tokens the store holds in total, or None for no token bound."""
        return self._max_tokens

    @property
    def tokens(self) -> int:
        """Total tokens of the segments held."""
        return self._tokens

    @property
    def min_score(self) -> float | None:
        """Score of the least relevant entry (the next to be evicted), None when empty."""
        return self._ranked[0][0] if self._ranked else None

    @property
    def max_score(self) -> float | None:
        """Score of the most relevant entry, None when empty."""
        return self._ranked[-1][0] if self._ranked else None

    def __len__(self) -> int:
        return len(self._by_seq)

    def __contains__(self, seq: object) -> bool:
        return seq in self._by_seq

    def __iter__(self) -> Iterator[StoreEntry]:
        """Entries in stream order (seq ascending); a copy, so the store may change meanwhile."""
        return iter(list(self._by_seq.values()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentStore):
            return NotImplemented
        return (
            self._max_segments == other._max_segments
            and self._max_tokens == other._max_tokens
            and list(self._by_seq.values()) == list(other._by_seq.values())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"SegmentStore(max_segments={self._max_segments}, max_tokens={self._max_tokens}, "
            f"len={len(self)}, tokens={self._tokens})"
        )

    # --- reading ----------------------------------------------------------------------

    def get(self, seq: int) -> StoreEntry | None:
        """The entry of segment ``seq``, or None if the store does not hold it."""
        return self._by_seq.get(seq)

    def ranked(self) -> list[StoreEntry]:
        """All entries, most relevant first (score descending; equal scores: newer first)."""
        return [self._by_seq[seq] for _, seq in reversed(self._ranked)]

    def stale(self, question_id: int) -> list[StoreEntry]:
        """Entries, in stream order, whose score was taken against another question than ``question_id``."""
        return [e for e in self._by_seq.values() if e.question_id != question_id]

    def select(self, budget_tokens: int, *, exclude_from: int | None = None) -> list[StoreEntry]:
        """The key context: the best entries that fit in ``budget_tokens``, in stream order.

        Entries are taken best-first (score descending, equal scores: newer first); an entry
        that does not fit in what is left of the budget is skipped and smaller, less relevant
        ones are still tried. ``exclude_from`` ignores entries whose segment starts at or
        after that stream offset: the caller adds the most recent tokens itself as a local
        window. (A segment that starts before ``exclude_from`` but ends after it is still
        eligible, so with overlapping segments some tokens can appear in both.)
        """
        ranked = (self._by_seq[seq] for _, seq in reversed(self._ranked))
        return select_best(ranked, budget_tokens, exclude_from=exclude_from)

    # --- writing ----------------------------------------------------------------------

    def offer(
        self,
        segment: Segment,
        score: float,
        *,
        question_id: int = 0,
        scores: Mapping[str, float] | None = None,
    ) -> Offer:
        """Offer a scored segment; keep it if it ranks above what must go to make room.

        Raises ValueError for a non-finite score or detail, an empty segment, or a ``seq``
        the store already holds. See the class docstring for the eviction rule.
        """
        seq = segment.seq
        what = f"segment {seq}"
        value = _check_score(score, what)
        details = _check_details(scores, what)
        if seq in self._by_seq:
            raise ValueError(f"{what} is already in the store")
        cost = segment.n_tokens
        if cost < 1:
            raise ValueError(f"{what} is empty: the store only holds segments of >= 1 token")
        if self._max_tokens is not None and cost > self._max_tokens:
            return Offer(False, [])

        # Entries ranked below the offered one are the only ones it may displace.
        n_below = self._ranked.bisect_left((value, seq))
        count_after = len(self._by_seq) + 1
        tokens_after = self._tokens + cost
        if count_after - self._max_segments > n_below:
            return Offer(False, [])
        victims: list[StoreEntry] = []
        lowest = self._ranked.islice(0, n_below)
        while count_after > self._max_segments or (self._max_tokens is not None and tokens_after > self._max_tokens):
            nxt = next(lowest, None)
            if nxt is None:  # the offered entry would be the next to go: reject it
                return Offer(False, [])
            victim: StoreEntry = self._by_seq[nxt[1]]
            victims.append(victim)
            count_after -= 1
            tokens_after -= victim.segment.n_tokens

        for victim in victims:
            self._discard(victim)
        self._insert(StoreEntry(segment=segment, score=value, question_id=question_id, scores=details))
        return Offer(True, victims)

    def rescore(
        self,
        scores: Mapping[int, float],
        *,
        question_id: int,
        details: Mapping[int, Mapping[str, float]] | None = None,
    ) -> list[StoreEntry]:
        """Replace the scores of the given segments (by seq), e.g. after the question changed.

        Each rescored entry gets ``question_id`` and its ``details`` entry (or no details:
        details taken against another question would mislead). The store's size does not
        change, so nothing is evicted; the new scores only change what goes next. All
        arguments are checked before anything changes: an unknown seq raises KeyError, a
        non-finite score or a ``details`` seq missing from ``scores`` raises ValueError.
        Returns the updated entries in stream order.
        """
        new_scores: dict[int, float] = {}
        for seq, score in scores.items():
            if seq not in self._by_seq:
                raise KeyError(f"segment {seq} is not in the store")
            new_scores[seq] = _check_score(score, f"segment {seq}")
        new_details: dict[int, dict[str, float]] = {}
        for seq, measures in (details or {}).items():
            if seq not in new_scores:
                raise ValueError(f"details given for segment {seq}, which is not being rescored")
            new_details[seq] = _check_details(measures, f"segment {seq}")

        updated: list[StoreEntry] = []
        for seq in sorted(new_scores):
            old: StoreEntry = self._by_seq[seq]
            new = msgspec.structs.replace(
                old, score=new_scores[seq], question_id=question_id, scores=new_details.get(seq, {})
            )
            self._ranked.remove(rank_key(old))
            self._ranked.add(rank_key(new))
            self._by_seq[seq] = new
            updated.append(new)
        return updated

    def remove(self, seq: int) -> StoreEntry:
        """Remove and return the entry of segment ``seq``; KeyError if the store does not hold it."""
        entry: StoreEntry | None = self._by_seq.get(seq)
        if entry is None:
            raise KeyError(f"segment {seq} is not in the store")
        self._discard(entry)
        return entry

    def resize(self, max_segments: int, max_tokens: int | None = None) -> list[StoreEntry]:
        """Change the bounds, evicting what no longer fits; returns the evicted, in eviction order.

        Entries longer than the new ``max_tokens`` go first (they can never be kept, and
        evicting lower-ranked ones for them would be useless), then the least relevant
        until the bounds hold. Use it to restore a snapshot under a changed configuration.
        """
        _check_bound("max_segments", max_segments, optional=False)
        _check_bound("max_tokens", max_tokens, optional=True)
        evicted: list[StoreEntry] = []
        if max_tokens is not None:
            for _, seq in list(self._ranked):
                entry: StoreEntry = self._by_seq[seq]
                if entry.segment.n_tokens > max_tokens:
                    self._discard(entry)
                    evicted.append(entry)
        while len(self._by_seq) > max_segments or (max_tokens is not None and self._tokens > max_tokens):
            entry = self._by_seq[self._ranked[0][1]]
            self._discard(entry)
            evicted.append(entry)
        self._max_segments = max_segments
        self._max_tokens = max_tokens
        return evicted

    def clear(self) -> None:
        """Remove every entry; the bounds stay."""
        self._by_seq.clear()
        self._ranked.clear()
        self._tokens = 0

    def take_over(self, other: SegmentStore) -> None:
        """Become ``other`` (its bounds and entries) in place, so references to this store stay
        current (the engine's rescan and restore build a new store, then this one takes it over).
        ``other`` must not be used afterwards."""
        self._max_segments, self._max_tokens = other._max_segments, other._max_tokens
        self._by_seq, self._ranked, self._tokens = other._by_seq, other._ranked, other._tokens
        other._by_seq, other._ranked, other._tokens = SortedDict(), SortedList(), 0

    # --- state ------------------------------------------------------------------------

    def snapshot(self) -> StoreSnapshot:
        """The bounds and entries (stream order) as a serialisable Struct."""
        return StoreSnapshot(
            max_segments=self._max_segments,
            max_tokens=self._max_tokens,
            entries=list(self._by_seq.values()),
        )

    @classmethod
    def from_snapshot(cls, snap: StoreSnapshot) -> SegmentStore:
        """Rebuild a store from a snapshot, checking it first.

        Raises ValueError for bad bounds, a duplicate seq, a non-finite score or detail, an
        empty segment, or entries that break the bounds (a snapshot never does unless it
        was corrupted or edited; to shrink a store use :meth:`resize`). Entries may come in
        any order.
        """
        store = cls(snap.max_segments, snap.max_tokens)
        if len(snap.entries) > snap.max_segments:
            raise ValueError(f"snapshot holds {len(snap.entries)} entries, over max_segments={snap.max_segments}")
        for entry in snap.entries:
            seq = entry.segment.seq
            what = f"snapshot entry for segment {seq}"
            if seq in store._by_seq:
                raise ValueError(f"{what}: duplicate seq")
            score = _check_score(entry.score, what)
            details = _check_details(entry.scores, what)
            if entry.segment.n_tokens < 1:
                raise ValueError(f"{what}: empty segment")
            if score != entry.score or type(entry.score) is not float or details != entry.scores:
                entry = msgspec.structs.replace(entry, score=score, scores=details)
            store._insert(entry)
        if snap.max_tokens is not None and store._tokens > snap.max_tokens:
            raise ValueError(f"snapshot holds {store._tokens} tokens, over max_tokens={snap.max_tokens}")
        return store

    # --- internals --------------------------------------------------------------------

    def _insert(self, entry: StoreEntry) -> None:
        self._by_seq[entry.segment.seq] = entry
        self._ranked.add(rank_key(entry))
        self._tokens += entry.segment.n_tokens

    def _discard(self, entry: StoreEntry) -> None:
        del self._by_seq[entry.segment.seq]
        self._ranked.remove(rank_key(entry))
        self._tokens -= entry.segment.n_tokens
