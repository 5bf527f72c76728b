"""Standing-question monitor: threshold parsing and semantics, warm-up, cool-down, running statistics."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xl3m_stream.errors import InputError
from xl3m_stream.monitor import (
    DEFAULT_MIN_OVERLAP,
    MIN_WARMUP,
    Lexicon,
    Monitor,
    RunningScores,
    Threshold,
    check_watch_options,
)


# ---------------------------------------------------------------- thresholds
@pytest.mark.parametrize(
    ("spec", "kind", "value"),
    [
        ("p99", "percentile", 99.0),
        ("P99.5", "percentile", 99.5),
        (" p50 ", "percentile", 50.0),
        ("z3", "zscore", 3.0),
        ("Z2.5", "zscore", 2.5),
        ("z0", "zscore", 0.0),
        ("1.5", "absolute", 1.5),
        ("-0.25", "absolute", -0.25),
        (2, "absolute", 2.0),
        (-1e30, "absolute", -1e30),
    ],
)
def test_threshold_parse(spec, kind, value) -> None:
    t = Threshold.parse(spec)
    assert (t.kind, t.value) == (kind, value)
    assert Threshold.parse(str(t)) == t  # str() round-trips
    assert Threshold.parse(t) is t


@pytest.mark.parametrize("spec", ["p100", "p0", "p", "z", "q3", "99%", "", "nan", float("nan"), True, None, [1]])
def test_threshold_parse_rejects(spec) -> None:
    with pytest.raises(InputError):
        Threshold.parse(spec)


def test_default_warmup_follows_the_threshold() -> None:
    assert Threshold.parse(0.5).default_warmup() == 0
    assert Threshold.parse("z3").default_warmup() == MIN_WARMUP
    assert Threshold.parse("p90").default_warmup() == MIN_WARMUP
    # p99.9 of n scores lies below their maximum only from n = 1000 on
    assert Threshold.parse("p99.9").default_warmup() == 1000


# ---------------------------------------------------------------- running scores
def test_running_scores_window_and_statistics() -> None:
    r = RunningScores(window=4)
    for x in [1.0, 2.0, 3.0, 4.0, 100.0]:
        r.add(x)
    assert r.count == 5 and len(r) == 4  # 1.0 fell out of the window
    assert r.mean == pytest.approx(statistics.fmean([2, 3, 4, 100]))
    assert r.std == pytest.approx(statistics.pstdev([2, 3, 4, 100]))
    assert r.quantile(0.0) == 2.0 and r.quantile(1.0) == 100.0
    assert r.quantile(0.5) == pytest.approx(3.5)
    with pytest.raises(ValueError):
        r.add(math.inf)
    with pytest.raises(ValueError):
        RunningScores(window=1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=1, max_size=200),
    st.integers(min_value=2, max_value=50),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_running_scores_match_the_window_exactly(values, window, q) -> None:
    r = RunningScores(window=window)
    for v in values:
        r.add(v)
    recent = values[-window:]
    assert r.count == len(values) and len(r) == len(recent)
    assert r.mean == pytest.approx(statistics.fmean(recent), abs=1e-6)
    assert r.std == pytest.approx(statistics.pstdev(recent), abs=1e-4)
    ordered = sorted(recent)
    got = r.quantile(q)
    assert ordered[0] <= got <= ordered[-1]
    # linear interpolation between the two neighbouring ranks (numpy's default method)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    assert got == pytest.approx(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), abs=1e-9)


# ---------------------------------------------------------------- decisions
def test_warmup_then_zscore_alert() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold="z3", warmup=10, cooldown=0)
    noise = [0.0, 1.0] * 5
    decisions = [m.observe(w.id, seq, {"nll": x}) for seq, x in enumerate(noise)]
    assert all(d.reason == "warmup" and not d.alert and d.threshold is None for d in decisions)
    assert m.threshold_value(w.id) == pytest.approx(0.5 + 3 * 0.5)  # mean 0.5, std 0.5
    below = m.observe(w.id, 10, {"nll": 1.9})
    assert below.reason == "below" and below.threshold == pytest.approx(2.0)
    hit = m.observe(w.id, 11, {"nll": 5.0})
    assert hit.alert and hit.reason == "alert" and hit.score == 5.0
    stats = m.stats(w.id)
    assert stats.seen == 12 and stats.alerts == 1 and not stats.warming_up and stats.max == 5.0


def test_percentile_threshold_is_taken_before_the_score_joins() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold="p90", warmup=10, cooldown=0)
    for seq in range(10):
        m.observe(w.id, seq, float(seq))  # 0..9: the 90th percentile is 8.1
    assert m.threshold_value(w.id) == pytest.approx(8.1)
    d = m.observe(w.id, 10, 8.2)
    assert d.alert and d.threshold == pytest.approx(8.1)
    assert not m.observe(w.id, 11, 8.1).alert  # equal is not above


def test_absolute_threshold_needs_no_warmup_and_counts_equal() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold=2.0, cooldown=0)
    assert w.warmup == 0
    assert m.observe(w.id, 0, 2.0).alert
    assert not m.observe(w.id, 1, 1.99).alert


def test_measure_picks_the_score() -> None:
    m = Monitor()
    a = m.add("q?", min_overlap=None, threshold=1.0, measure="nll")
    b = m.add("q?", min_overlap=None, threshold=1.0, measure="gain")
    scores = {"entropy": 0.0, "nll": 2.0, "gain": 0.5, "tgain": 3.0}
    assert m.observe(a.id, 0, scores).alert
    assert not m.observe(b.id, 0, scores).alert


def test_cooldown_merges_a_run_of_crossings() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold=1.0, cooldown=1)
    crossing = {0, 1, 2, 5, 7, 8}
    alerts = [seq for seq in range(10) if m.observe(w.id, seq, 2.0 if seq in crossing else 0.0).alert]
    # 0-1-2 is one run (each within one segment of the previous crossing); 5 stands alone;
    # 7 is two segments after 5, so it alerts; 8 continues 7's run
    assert alerts == [0, 5, 7]
    assert m.stats(w.id).suppressed == 3


def test_cooldown_zero_alerts_every_crossing_and_order_does_not_matter() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold=1.0, cooldown=0)
    assert [m.observe(w.id, s, 2.0).alert for s in (3, 4, 5)] == [True, True, True]
    m2 = Monitor()
    w2 = m2.add("q?", min_overlap=None, threshold=1.0, cooldown=2)
    # batches may finish out of order: a crossing just before the last one is suppressed too
    assert [m2.observe(w2.id, s, 2.0).alert for s in (10, 9, 20)] == [True, False, True]


def test_min_score_floor() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold="z1", warmup=4, cooldown=0, min_score=0.5)
    for seq, x in enumerate([0.0, 0.1, 0.0, 0.1]):
        m.observe(w.id, seq, x)
    d = m.observe(w.id, 4, 0.4)  # far above z1, under the floor
    assert not d.alert and d.reason == "min_score"
    assert m.observe(w.id, 5, 0.6).alert


def test_non_finite_scores_are_skipped() -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold=0.0)
    d = m.observe(w.id, 0, {"nll": math.nan})
    assert d.reason == "invalid" and not d.alert
    assert m.stats(w.id).seen == 0


@pytest.mark.parametrize(
    ("embedder", "measure", "min_overlap", "expected"),
    [
        ("minilm", "nll", "auto", "z2"),  # a certainty measure behind its lexical gate
        ("minilm", "entropy", 0.3, "z2"),
        ("minilm", "nll", None, "z4"),  # the model alone: the stricter measured threshold
        ("minilm", "dense", "auto", "z2"),
        ("minilm", "fused", "auto", "z5.625"),  # measured with MiniLM as the dense embedder
        ("mpnet", "fused", "auto", "z5.625"),  # measured with mpnet (the same value came out)
        ("mpnet", "nll", "auto", "z2"),  # the embedder matters to fused watches only
        ("/models/my-embedder", "fused", None, "z5.625"),  # a directory: MiniLM's, none was measured
    ],
)
def test_auto_threshold_is_the_measured_one(embedder: str, measure: str, min_overlap: object, expected: str) -> None:
    want = Threshold.parse(expected)
    for threshold in ("auto", " AUTO "):  # the default, spelled either way
        w = Monitor(embedder).add("Is a disk failing?", measure=measure, min_overlap=min_overlap, threshold=threshold)
        assert w.threshold == want
        assert (
            check_watch_options(
                "Is a disk failing?", measure=measure, min_overlap=min_overlap, embedder=embedder
            ).threshold
            == want
        )
    w = Monitor(embedder).add("Is a disk failing?", measure=measure, min_overlap=min_overlap)  # by default
    assert w.threshold == want and w.warmup == want.default_warmup()
    told = Monitor(embedder).add("Is a disk failing?", measure=measure, min_overlap=min_overlap, threshold="p99")
    assert told.threshold == Threshold("percentile", 99.0)  # a threshold given is kept


def test_add_validates_and_remove() -> None:
    m = Monitor()
    for bad in (
        dict(question=""),
        dict(question="q", measure="bm25"),
        dict(question="q", warmup=-1),
        dict(question="q", cooldown=1.5),
        dict(question="q", min_score=math.inf),
        dict(question="q", threshold="p101"),
        dict(question="q", threshold="automatic"),
        dict(question="q", min_overlap=1.5),
        dict(question="???", min_overlap=0.2),  # no words for the lexical gate
    ):
        with pytest.raises(InputError):
            m.add(**bad)
    a = m.add("a?")
    b = m.add("b?")
    assert [w.id for w in m] == [a.id, b.id] and len(m) == 2 and a.id != b.id
    m.remove(a.id)
    assert a.id not in m and len(m) == 1
    with pytest.raises(InputError):
        m.remove(a.id)
    with pytest.raises(InputError):
        m.observe(a.id, 0, 1.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=-5, max_value=5, allow_nan=False), min_size=1, max_size=120),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=30),
)
def test_alert_invariants(values, cooldown, warmup) -> None:
    m = Monitor()
    w = m.add("q?", min_overlap=None, threshold="z1", warmup=warmup, cooldown=cooldown)
    alerted = []
    for seq, v in enumerate(values):
        d = m.observe(w.id, seq, v)
        assert d.alert == (d.reason == "alert")
        if seq < warmup:
            assert d.reason == "warmup"  # never an alert during warm-up
        if d.alert:
            assert d.threshold is not None and d.score > d.threshold
            alerted.append(seq)
    # alerts are more than `cooldown` segments apart
    assert all(b - a > cooldown for a, b in zip(alerted, alerted[1:]))
    assert m.stats(w.id).alerts == len(alerted)


# ---------------------------------------------------------------- the lexical gate
def test_lexicon_weights_rare_words() -> None:
    lex = Lexicon("Which service reported the disk failure?")
    assert lex.terms == ("disk", "failure", "reported", "service", "the", "which")
    routine = "INFO storage disk usage 45% on /dev/sda"
    common = [lex.overlap(routine) for _ in range(50)]
    # "disk" is in every segment: it weighs less and less
    assert common[-1] < common[0] and common[-1] < 0.05
    incident = lex.overlap("ERROR storage disk failure on /dev/sdb: I/O error")
    assert incident > 0.15 > 10 * common[-1]  # "failure" was never seen: it weighs most
    assert lex.overlap("nothing in common here") == 0.0
    assert lex.segments == 52 and lex.df["disk"] == 51 and lex.df["failure"] == 1
    assert Lexicon("WHICH? which!").terms == ("which",)


def test_lexical_gate_blocks_segments_without_the_questions_words() -> None:
    m = Monitor()
    w = m.add("Which service reported the disk failure?", threshold="z1", warmup=4, cooldown=0)
    assert w.min_overlap == DEFAULT_MIN_OVERLAP
    for seq in range(4):
        m.observe(w.id, seq, {"nll": 0.1 * (seq % 2)}, "INFO api GET /health 200")
    high = m.observe(w.id, 4, {"nll": 5.0}, "WARN api retrying connection")  # relevant to the model, not in words
    assert not high.alert and high.reason == "overlap" and high.overlap == 0.0
    hit = m.observe(w.id, 5, {"nll": 5.0}, "ERROR storage disk failure on /dev/sdb")
    assert hit.alert and hit.overlap is not None and hit.overlap >= DEFAULT_MIN_OVERLAP
    low = m.observe(w.id, 6, {"nll": -5.0}, "ERROR storage disk failure on /dev/sdb")  # in words, not to the model
    assert not low.alert and low.reason == "below"
    with pytest.raises(InputError):
        m.observe(w.id, 7, {"nll": 1.0})  # the gate needs the text
    off = m.add("Which service reported the disk failure?", threshold=1.0, min_overlap=None)
    d = m.observe(off.id, 0, {"nll": 2.0})
    assert d.alert and d.overlap is None


# ---------------------------------------------------------------- fused watches
def test_a_fused_watch_alerts_on_a_segment_strong_in_one_signal_only() -> None:
    from xl3m_stream.relevance import ArrivalFusion

    m = Monitor()
    w = m.add("Is a disk failing?", measure="fused", threshold="z3", warmup=40, min_overlap=None)
    mirror = ArrivalFusion(["certainty", "lexical", "dense"], window=w.window, combine="top2")

    def row(i: int, dense: float = 0.0) -> dict[str, float]:
        return {
            "nll": -5.0 + 0.05 * (i % 5),
            "entropy": 1.0,
            "bm25": 0.3 * (i % 3),
            "dense": 0.2 + 0.01 * (i % 4) + dense,
        }

    decisions = []
    for i in range(120):
        scores = row(i, dense=0.5 if i == 90 else 0.0)  # only the embedding sees segment 90
        d = m.observe(w.id, i, scores)
        expected = mirror.score({"certainty": scores["nll"], "lexical": scores["bm25"], "dense": scores["dense"]})
        assert d.score == pytest.approx(expected)  # the watch's score is the fused arrival score
        decisions.append(d)
    assert [d.seq for d in decisions if d.alert] == [90]


def test_a_fused_watch_uses_the_signals_it_is_given_and_needs_the_certainty() -> None:
    m = Monitor()
    w = m.add("Is a disk failing?", measure="fused", threshold="z3", warmup=10, min_overlap=None)
    for i in range(30):  # certainty and BM25 only (no embedder): still fused, over the two
        d = m.observe(w.id, i, {"nll": -5.0 + 0.01 * (i % 3), "bm25": 9.0 if i == 25 else 0.1 * (i % 2)})
    assert m.stats(w.id).alerts == 1
    assert d.reason != "invalid"
    assert m.observe(w.id, 30, {"nll": math.nan, "bm25": 0.0}).reason == "invalid"
    with pytest.raises(InputError, match="nll"):
        m.observe(w.id, 31, {"bm25": 1.0})


@pytest.mark.parametrize(("measure", "gate"), [("nll", DEFAULT_MIN_OVERLAP), ("dense", None), ("fused", None)])
def test_the_lexical_gate_by_default_follows_the_measure(measure, gate) -> None:
    m = Monitor()
    assert m.add("Is a disk failing?", measure=measure).min_overlap == gate
    assert m.add("Is a disk failing?", measure=measure, min_overlap=0.5).min_overlap == 0.5  # told: kept
    assert m.add("Is a disk failing?", measure=measure, min_overlap=None).min_overlap is None
