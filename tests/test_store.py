"""Tests of the bounded segment store against a plain reference model.

The reference (:class:`RefStore`) states the eviction rule literally, with a list that
is re-sorted on every change; a hypothesis state machine drives the real store and the
reference through the same operations and checks that they agree after every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from xl3m_stream.segment import Segment
from xl3m_stream.store import Offer, SegmentStore, StoreEntry, StoreSnapshot


def seg(seq: int, n: int = 1, *, start: int | None = None, meta: dict | None = None) -> Segment:
    """A segment ``seq`` of ``n`` tokens; by default segment ``seq`` starts at token ``10 * seq``."""
    start = 10 * seq if start is None else start
    return Segment(seq=seq, start=start, end=start + n, tokens=tuple(range(start, start + n)), meta=meta)


def key(e: StoreEntry) -> tuple[float, int]:
    return (e.score, e.segment.seq)


def seqs(entries: Sequence[StoreEntry]) -> list[int]:
    return [e.segment.seq for e in entries]


# --- the reference model ------------------------------------------------------------------


class RefStore:
    """The eviction rule, stated as simply as possible (O(n log n) per operation)."""

    def __init__(self, max_segments: int, max_tokens: int | None) -> None:
        self.max_segments = max_segments
        self.max_tokens = max_tokens
        self.entries: list[StoreEntry] = []

    def over(self, entries: list[StoreEntry], max_segments: int, max_tokens: int | None) -> bool:
        tokens = sum(e.segment.n_tokens for e in entries)
        return len(entries) > max_segments or (max_tokens is not None and tokens > max_tokens)

    def offer(self, entry: StoreEntry) -> tuple[bool, list[StoreEntry]]:
        """Add it, then drop the lowest (score, seq) until the bounds hold; if it is dropped, undo."""
        cand = sorted([*self.entries, entry], key=key)
        evicted: list[StoreEntry] = []
        while self.over(cand, self.max_segments, self.max_tokens):
            evicted.append(cand.pop(0))
        if entry in evicted:
            return False, []
        self.entries = cand
        return True, evicted

    def resize(self, max_segments: int, max_tokens: int | None) -> list[StoreEntry]:
        cand = sorted(self.entries, key=key)
        evicted = [e for e in cand if max_tokens is not None and e.segment.n_tokens > max_tokens]
        cand = [e for e in cand if e not in evicted]
        while self.over(cand, max_segments, max_tokens):
            evicted.append(cand.pop(0))
        self.entries, self.max_segments, self.max_tokens = cand, max_segments, max_tokens
        return evicted

    def select(self, budget: int, exclude_from: int | None) -> list[StoreEntry]:
        """Greedy best-first knapsack: take each entry, best first, if it still fits."""
        chosen, left = [], budget
        for e in sorted(self.entries, key=key, reverse=True):
            if exclude_from is not None and e.segment.start >= exclude_from:
                continue
            if e.segment.n_tokens <= left:
                chosen.append(e)
                left -= e.segment.n_tokens
        return sorted(chosen, key=lambda e: e.segment.seq)

    def stream(self) -> list[StoreEntry]:
        return sorted(self.entries, key=lambda e: e.segment.seq)


# Few distinct scores so that ties (decided by seq) are common.
scores_st = st.one_of(st.integers(-3, 3).map(float), st.floats(-5, 5, allow_nan=False, width=16))
bounds_st = st.tuples(st.integers(1, 6), st.none() | st.integers(1, 12))


class StoreMachine(RuleBasedStateMachine):
    """Random operations on a SegmentStore and on the reference; they must agree at every step."""

    @initialize(bounds=bounds_st)
    def init(self, bounds: tuple[int, int | None]) -> None:
        self.store = SegmentStore(*bounds)
        self.ref = RefStore(*bounds)

    @rule(seq=st.integers(0, 30), n=st.integers(1, 7), score=scores_st, qid=st.integers(0, 3))
    def offer(self, seq: int, n: int, score: float, qid: int) -> None:
        segment = seg(seq, n)
        if seq in self.store:
            with pytest.raises(ValueError, match="already in the store"):
                self.store.offer(segment, score, question_id=qid)
            return
        result = self.store.offer(segment, score, question_id=qid, scores={"nll": -score})
        kept, evicted = self.ref.offer(
            StoreEntry(segment=segment, score=score, question_id=qid, scores={"nll": -score})
        )
        assert result == Offer(kept, evicted)
        if not kept:
            assert seq not in self.store
        if self.store.max_tokens is not None and n > self.store.max_tokens:
            assert not kept

    @precondition(lambda self: len(self.store) > 0)
    @rule(data=st.data(), qid=st.integers(0, 3))
    def rescore(self, data: st.DataObject, qid: int) -> None:
        present = seqs(list(self.store))
        chosen = data.draw(st.lists(st.sampled_from(present), unique=True))
        new = {s: data.draw(scores_st) for s in chosen}
        updated = self.store.rescore(new, question_id=qid, details={s: {"entropy": 1.0} for s in chosen[:1]})
        assert seqs(updated) == sorted(chosen)
        for e in updated:
            assert e.score == new[e.segment.seq] and e.question_id == qid
            assert e.scores == ({"entropy": 1.0} if e.segment.seq == chosen[0] else {})
        self.ref.entries = [
            msgspec.structs.replace(
                e,
                score=new[e.segment.seq],
                question_id=qid,
                scores={"entropy": 1.0} if e.segment.seq == chosen[0] else {},
            )
            if e.segment.seq in new
            else e
            for e in self.ref.entries
        ]

    @rule(seq=st.integers(0, 30), score=scores_st)
    def rescore_is_atomic(self, seq: int, score: float) -> None:
        """A bad rescore (unknown seq or NaN) changes nothing, even for the good seqs in it."""
        before = self.store.snapshot()
        good = {s: score + 1 for s in seqs(list(self.store))}
        if seq not in self.store:
            with pytest.raises(KeyError):
                self.store.rescore({**good, seq: score}, question_id=9)
        elif good:
            with pytest.raises(ValueError, match="finite"):
                self.store.rescore({**good, seq: math.nan}, question_id=9)
        assert self.store.snapshot() == before

    @rule(seq=st.integers(0, 30))
    def remove(self, seq: int) -> None:
        if seq not in self.store:
            with pytest.raises(KeyError):
                self.store.remove(seq)
            return
        removed = self.store.remove(seq)
        assert removed.segment.seq == seq and removed in self.ref.entries
        self.ref.entries.remove(removed)

    @rule(budget=st.integers(0, 30), exclude_from=st.none() | st.integers(0, 300))
    def select(self, budget: int, exclude_from: int | None) -> None:
        chosen = self.store.select(budget, exclude_from=exclude_from)
        assert chosen == self.ref.select(budget, exclude_from)
        assert sum(e.segment.n_tokens for e in chosen) <= budget
        assert seqs(chosen) == sorted(seqs(chosen))
        if exclude_from is not None:
            assert all(e.segment.start < exclude_from for e in chosen)

    @rule(bounds=bounds_st)
    def resize(self, bounds: tuple[int, int | None]) -> None:
        assert self.store.resize(*bounds) == self.ref.resize(*bounds)

    @rule(codec=st.sampled_from([msgspec.json, msgspec.msgpack]))
    def snapshot_round_trip(self, codec) -> None:
        snap = codec.decode(codec.encode(self.store.snapshot()), type=StoreSnapshot)
        restored = SegmentStore.from_snapshot(snap)
        assert restored == self.store
        assert restored.ranked() == self.store.ranked()
        self.store = restored  # go on with the restored store: it must behave the same

    @rule()
    def clear(self) -> None:
        self.store.clear()
        self.ref.entries = []

    @invariant()
    def agrees_with_reference(self) -> None:
        store, ref = self.store, self.ref
        entries = list(store)
        assert entries == ref.stream()  # same kept set, in stream order
        assert seqs(entries) == sorted(seqs(entries))
        assert len(store) == len(entries) <= store.max_segments
        assert store.tokens == sum(e.segment.n_tokens for e in entries)
        if store.max_tokens is not None:
            assert store.tokens <= store.max_tokens
        assert store.ranked() == sorted(entries, key=key, reverse=True)
        assert store.min_score == (min(e.score for e in entries) if entries else None)
        assert store.max_score == (max(e.score for e in entries) if entries else None)
        for e in entries:
            assert e.segment.seq in store and store.get(e.segment.seq) == e
        assert store.stale(0) == [e for e in entries if e.question_id != 0]


StoreMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=30, deadline=None)
TestStoreMachine = StoreMachine.TestCase


# --- properties that need no state machine ----------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(k=st.integers(1, 8), offers=st.lists(st.tuples(scores_st, st.integers(1, 5)), max_size=25))
def test_segment_bound_keeps_top_k(k: int, offers: list[tuple[float, int]]) -> None:
    """With only a segment bound, offers alone leave exactly the top k by (score, seq)."""
    store = SegmentStore(k)
    for seq, (score, n) in enumerate(offers):
        store.offer(seg(seq, n), score)
    best = sorted(((score, seq) for seq, (score, _) in enumerate(offers)), reverse=True)[:k]
    assert sorted(seq for _, seq in best) == seqs(list(store))


@settings(max_examples=60, deadline=None)
@given(offers=st.lists(st.tuples(scores_st, st.integers(1, 5)), max_size=20), bounds=bounds_st)
def test_deterministic(offers: list[tuple[float, int]], bounds: tuple[int, int | None]) -> None:
    """The same operations give byte-identical state."""

    def run() -> bytes:
        store = SegmentStore(*bounds)
        for seq, (score, n) in enumerate(offers):
            store.offer(seg(seq, n), score)
        store.rescore({e.segment.seq: -e.score for e in list(store)[::2]}, question_id=1)
        return msgspec.msgpack.encode(store.snapshot())

    assert run() == run()


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 5), scores=st.lists(scores_st, min_size=1, max_size=5), n=st.integers(1, 4))
def test_least_relevant_offer_into_full_store_is_not_kept(k: int, scores: list[float], n: int) -> None:
    store = SegmentStore(k)
    for seq in range(k):
        store.offer(seg(seq + 100, 1), scores[seq % len(scores)])  # seqs 100.. are newer than seq 0
    before = store.snapshot()
    low = min(scores) - 1.0
    assert store.offer(seg(0, n), low) == Offer(False, [])
    # Equal to the minimum score but older than every entry: still the least relevant.
    assert store.offer(seg(1, n), min(scores)) == Offer(False, [])
    assert store.snapshot() == before


# --- examples ---------------------------------------------------------------------------------


def test_ties_evict_the_older_segment() -> None:
    store = SegmentStore(2)
    store.offer(seg(5), 1.0)
    store.offer(seg(7), 1.0)
    result = store.offer(seg(9), 1.0)  # equal score, newest: evicts seq 5
    assert result.kept and seqs(result.evicted) == [5]
    assert seqs(list(store)) == [7, 9]
    assert seqs(store.ranked()) == [9, 7]
    assert store.offer(seg(6), 1.0) == Offer(False, [])  # equal score but older than 7 and 9


def test_token_bound_evicts_several_and_rejects_without_side_effects() -> None:
    store = SegmentStore(10, max_tokens=10)
    store.offer(seg(0, 3), 1.0)
    store.offer(seg(1, 3), 2.0)
    store.offer(seg(2, 4), 5.0)
    assert store.tokens == 10
    # 5 tokens, score 3: must free 5 tokens; seq 0 (3) then seq 1 (3) go, least relevant first.
    result = store.offer(seg(3, 5), 3.0)
    assert result.kept and seqs(result.evicted) == [0, 1]
    assert seqs(list(store)) == [2, 3] and store.tokens == 9
    # 7 tokens, score 4: would need seq 3 (score 3) and then seq 2 (score 5) to go -> rejected,
    # and seq 3, although less relevant, is not evicted.
    assert store.offer(seg(4, 7), 4.0) == Offer(False, [])
    assert seqs(list(store)) == [2, 3] and store.tokens == 9


def test_segment_longer_than_max_tokens_is_never_kept() -> None:
    store = SegmentStore(3, max_tokens=4)
    assert store.offer(seg(0, 5), 100.0) == Offer(False, [])
    assert len(store) == 0
    store.offer(seg(1, 4), 0.0)
    assert store.offer(seg(2, 5), 100.0) == Offer(False, [])
    assert seqs(list(store)) == [1]


def test_select_skips_what_does_not_fit_and_returns_stream_order() -> None:
    store = SegmentStore(10)
    store.offer(seg(0, 2), 1.0)
    store.offer(seg(1, 6), 9.0)
    store.offer(seg(2, 5), 8.0)
    store.offer(seg(3, 3), 7.0)
    # best first: 1 (6 tokens) fits in 10, 2 (5) does not fit in 4, 3 (3) does, 0 (2) does not fit in 1.
    assert seqs(store.select(10)) == [1, 3]
    assert seqs(store.select(11)) == [1, 2]
    assert seqs(store.select(5)) == [2]
    assert seqs(store.select(4)) == [3]
    assert seqs(store.select(2)) == [0]
    assert store.select(0) == []
    # exclude_from drops segments starting at or after it (seg 3 starts at 30, seg 2 at 20).
    assert seqs(store.select(10, exclude_from=30)) == [0, 1]
    assert seqs(store.select(10, exclude_from=20)) == [0, 1]
    # A segment that starts before exclude_from is eligible even if it ends after it.
    assert seqs(store.select(10, exclude_from=31)) == [1, 3]
    assert store.select(100, exclude_from=0) == []


def test_rescore_changes_what_goes_next() -> None:
    store = SegmentStore(3)
    for seq, score in enumerate([5.0, 6.0, 7.0]):
        store.offer(seg(seq), score)
    assert store.min_score == 5.0
    updated = store.rescore({2: 1.0, 0: 9.0}, question_id=2, details={2: {"entropy": 0.5}})
    assert [(e.segment.seq, e.score, e.question_id, e.scores) for e in updated] == [
        (0, 9.0, 2, {}),
        (2, 1.0, 2, {"entropy": 0.5}),
    ]
    assert len(store) == 3 and store.min_score == 1.0
    assert seqs(store.stale(2)) == [1]
    result = store.offer(seg(3), 2.0)
    assert result.kept and seqs(result.evicted) == [2]  # seq 2, newly the least relevant
    assert seqs(store.ranked()) == [0, 1, 3]


def test_rescore_rejects_details_for_seqs_not_rescored() -> None:
    store = SegmentStore(3)
    store.offer(seg(0), 1.0)
    store.offer(seg(1), 1.0)
    with pytest.raises(ValueError, match="not being rescored"):
        store.rescore({0: 2.0}, question_id=1, details={1: {"nll": 1.0}})
    assert [e.score for e in store] == [1.0, 1.0]


def test_remove_get_contains_clear() -> None:
    store = SegmentStore(3, max_tokens=10)
    store.offer(seg(0, 4), 1.0)
    store.offer(seg(1, 4), 2.0)
    assert 0 in store and 2 not in store and store.get(2) is None
    assert store.remove(0).segment.seq == 0
    assert 0 not in store and store.tokens == 4
    with pytest.raises(KeyError):
        store.remove(0)
    store.clear()
    assert len(store) == 0 and store.tokens == 0 and store.min_score is None and list(store) == []
    assert (store.max_segments, store.max_tokens) == (3, 10)


def test_iteration_is_a_copy() -> None:
    store = SegmentStore(5)
    for seq in range(4):
        store.offer(seg(seq), float(seq))
    for e in store:  # removing while iterating is safe
        store.remove(e.segment.seq)
    assert len(store) == 0


def test_resize_evicts_oversize_then_least_relevant() -> None:
    store = SegmentStore(5)
    store.offer(seg(0, 9), 10.0)
    store.offer(seg(1, 2), 1.0)
    store.offer(seg(2, 2), 2.0)
    store.offer(seg(3, 2), 3.0)
    evicted = store.resize(2, max_tokens=5)
    assert seqs(evicted) == [0, 1]  # seq 0 can never fit; then seq 1 for the segment bound
    assert seqs(list(store)) == [2, 3] and (store.max_segments, store.max_tokens) == (2, 5)


# --- snapshots --------------------------------------------------------------------------------


def full_store() -> SegmentStore:
    store = SegmentStore(4, max_tokens=20)
    store.offer(seg(3, 5, meta={"lines": [3, 7], "source": "app.log"}), 0.25, question_id=1, scores={"nll": 2.5})
    store.offer(seg(1, 4), -1.5, question_id=1)
    store.offer(seg(8, 6, start=75), 3.0, question_id=2, scores={"entropy": 0.1, "gain": -0.3})
    return store


@pytest.mark.parametrize("codec", [msgspec.json, msgspec.msgpack], ids=["json", "msgpack"])
def test_snapshot_round_trip(codec) -> None:
    store = full_store()
    snap = store.snapshot()
    assert seqs(snap.entries) == [1, 3, 8]
    restored = SegmentStore.from_snapshot(codec.decode(codec.encode(snap), type=StoreSnapshot))
    assert restored == store
    assert restored.snapshot() == snap
    assert restored.tokens == store.tokens and restored.ranked() == store.ranked()
    assert restored != SegmentStore(4, max_tokens=21)


def test_take_over_becomes_the_other_store_in_place() -> None:
    store = SegmentStore(2)
    store.offer(seg(0, 3), 9.0)
    other = full_store()
    expected = other.snapshot()
    store.take_over(other)
    assert store.snapshot() == expected and store.tokens == 15 and len(store) == 3
    assert len(other) == 0 and other.tokens == 0  # the two share nothing afterwards
    store.offer(seg(9, 6), 5.0)  # the taken-over bounds hold: 4 segments, 20 tokens
    assert len(store) <= 4 and store.tokens <= 20 and 9 in store


def test_from_snapshot_accepts_any_entry_order() -> None:
    snap = full_store().snapshot()
    shuffled = msgspec.structs.replace(snap, entries=snap.entries[::-1])
    assert SegmentStore.from_snapshot(shuffled) == full_store()


def _corrupt(**changes) -> StoreSnapshot:
    return msgspec.structs.replace(full_store().snapshot(), **changes)


@pytest.mark.parametrize(
    ("snap", "match"),
    [
        pytest.param(
            _corrupt(max_segments=5, entries=[*full_store().snapshot().entries, full_store().snapshot().entries[0]]),
            "duplicate",
            id="duplicate-seq",
        ),
        pytest.param(
            _corrupt(entries=[msgspec.structs.replace(full_store().snapshot().entries[0], score=math.nan)]),
            "finite",
            id="nan-score",
        ),
        pytest.param(
            _corrupt(entries=[msgspec.structs.replace(full_store().snapshot().entries[0], score=math.inf)]),
            "finite",
            id="inf-score",
        ),
        pytest.param(
            _corrupt(entries=[msgspec.structs.replace(full_store().snapshot().entries[0], scores={"nll": math.nan})]),
            "finite",
            id="nan-detail",
        ),
        pytest.param(_corrupt(max_segments=2), "max_segments", id="over-max-segments"),
        pytest.param(_corrupt(max_tokens=14), "max_tokens", id="over-max-tokens"),
        pytest.param(
            _corrupt(max_tokens=5, entries=[StoreEntry(segment=seg(0, 6), score=1.0)]),
            "max_tokens",
            id="one-segment-over-max-tokens",
        ),
        pytest.param(_corrupt(entries=[StoreEntry(segment=seg(0, 0), score=1.0)]), "empty", id="empty-segment"),
        pytest.param(_corrupt(max_segments=0), "max_segments", id="bad-max-segments"),
        pytest.param(_corrupt(max_tokens=0), "max_tokens", id="bad-max-tokens"),
    ],
)
def test_from_snapshot_rejects_corrupted(snap: StoreSnapshot, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SegmentStore.from_snapshot(snap)


def test_nan_survives_msgpack_but_from_snapshot_rejects_it() -> None:
    entry = StoreEntry(segment=seg(0), score=math.nan)
    snap = msgspec.msgpack.decode(
        msgspec.msgpack.encode(StoreSnapshot(max_segments=2, entries=[entry])), type=StoreSnapshot
    )
    with pytest.raises(ValueError, match="finite"):
        SegmentStore.from_snapshot(snap)


def test_decoding_rejects_malformed_snapshots() -> None:
    good = msgspec.json.encode(full_store().snapshot())
    bad_segment = good.replace(b'"end":35', b'"end":36')  # [30, 36) does not hold 5 tokens
    assert bad_segment != good
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(bad_segment, type=StoreSnapshot)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(good[:-1] + b',"extra":1}', type=StoreSnapshot)


# --- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_segments", "max_tokens", "match"),
    [
        (0, None, "max_segments"),
        (-1, None, "max_segments"),
        (2.0, None, "max_segments"),
        (True, None, "max_segments"),
        (None, None, "max_segments"),
        (1, 0, "max_tokens"),
        (1, -5, "max_tokens"),
        (1, 3.5, "max_tokens"),
    ],
)
def test_bad_bounds(max_segments, max_tokens, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SegmentStore(max_segments, max_tokens)
    with pytest.raises(ValueError, match=match):
        SegmentStore(3).resize(max_segments, max_tokens)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_offer_rejects_non_finite_score(score: float) -> None:
    store = SegmentStore(2)
    with pytest.raises(ValueError, match="finite"):
        store.offer(seg(0), score)
    with pytest.raises(ValueError, match="finite"):
        store.offer(seg(0), 1.0, scores={"nll": score})
    assert len(store) == 0


def test_offer_rejects_duplicate_and_empty_segments() -> None:
    store = SegmentStore(2)
    store.offer(seg(0), 1.0)
    with pytest.raises(ValueError, match="already in the store"):
        store.offer(seg(0), 5.0)
    with pytest.raises(ValueError, match="empty"):
        store.offer(seg(1, 0), 5.0)
    assert [(e.segment.seq, e.score) for e in store] == [(0, 1.0)]


@pytest.mark.parametrize("budget", [-1, 1.5, True])
def test_select_rejects_bad_budget(budget) -> None:
    store = SegmentStore(2)
    store.offer(seg(0), 1.0)
    with pytest.raises(ValueError, match="budget_tokens"):
        store.select(budget)


def test_rescore_unknown_seq_is_key_error() -> None:
    store = SegmentStore(2)
    with pytest.raises(KeyError):
        store.rescore({0: 1.0}, question_id=1)
