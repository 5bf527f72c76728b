"""Tests of Segmenter: segment layout depends only on the token stream."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xl3m_stream.segment import Segment
from xl3m_stream.segmenter import Segmenter, newline_token_ids
from xl3m_stream.testing import build_tiny_tokenizer

BOUNDARY = frozenset({0, 1})


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, object]:
    length = draw(st.integers(1, 40))
    return {
        "length": length,
        "overlap": draw(st.integers(0, length - 1)),
        "min_fill": draw(st.sampled_from([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])),
        "start_seq": draw(st.integers(0, 5)),
        "start_pos": draw(st.integers(0, 1000)),
    }


streams = st.lists(st.integers(0, 9), max_size=400)


def _chunks(ids: list[int], cuts: list[int]) -> list[list[int]]:
    bounds = [0, *sorted({min(c, len(ids)) for c in cuts}), len(ids)]
    return [ids[a:b] for a, b in pairwise(bounds)]


def _run(seg: Segmenter, chunks: Sequence[Sequence[int]]) -> tuple[list[Segment], list[Segment]]:
    """Push every chunk then flush; check position/pending after every call.

    Returns (segments from pushes, segments from flush)."""
    stream: list[int] = []
    origin = seg.position
    pushed: list[Segment] = []
    for chunk in chunks:
        pushed += seg.push(chunk)
        stream += chunk
        assert seg.position == origin + len(stream)
        pending = seg.pending
        assert len(pending) < seg.length
        assert 0 <= seg.carried <= len(pending)
        assert list(pending) == stream[len(stream) - len(pending) :]
        if pushed:
            assert pushed[-1].end - seg.carried == seg.position - len(pending)
    tail = seg.flush()
    assert seg.position == origin + len(stream)
    assert len(seg.pending) == seg.carried  # only the carried overlap is left
    assert seg.flush() == []  # nothing new: no overlap-only segment
    return pushed, tail


def _check_tiling(
    segs: list[Segment], stream: list[int], length: int, overlap: int, start_seq: int, start_pos: int
) -> None:
    """Segments minus their shared prefix tile the stream exactly; offsets and seq are consistent."""
    rebuilt: list[int] = []
    for k, s in enumerate(segs):
        assert s.seq == start_seq + k
        assert list(s.tokens) == stream[s.start - start_pos : s.end - start_pos]
        assert 0 < s.n_tokens <= length
        if k == 0:
            assert s.start == start_pos
            shared = 0
        else:
            shared = min(overlap, segs[k - 1].n_tokens)
            assert s.start == segs[k - 1].end - shared
        assert s.n_tokens > shared  # every segment holds new tokens
        rebuilt += s.tokens[shared:]
    assert rebuilt == stream


@settings(max_examples=200, deadline=None)
@given(layout=layouts(), stream=streams, line_aware=st.booleans(), data=st.data())
def test_any_chunking_gives_identical_segments(
    layout: dict, stream: list[int], line_aware: bool, data: st.DataObject
) -> None:
    boundary = BOUNDARY if line_aware else None
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    a = _run(Segmenter(**layout, boundary_ids=boundary), _chunks(stream, cuts))
    b = _run(Segmenter(**layout, boundary_ids=boundary), [stream])
    c = _run(Segmenter(**layout, boundary_ids=boundary), [[t] for t in stream])
    assert a == b == c


@settings(max_examples=200, deadline=None)
@given(layout=layouts(), stream=streams, data=st.data())
def test_fixed_segments_tile_the_stream(layout: dict, stream: list[int], data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    pushed, tail = _run(Segmenter(**layout), _chunks(stream, cuts))
    segs = pushed + tail
    length, overlap = layout["length"], layout["overlap"]
    _check_tiling(segs, stream, length, overlap, layout["start_seq"], layout["start_pos"])
    assert all(s.n_tokens == length for s in pushed)
    assert len(tail) <= 1
    if tail:
        assert tail[0].n_tokens < length
    # exactly the segments that fit were cut
    expected = 0 if len(stream) < length else 1 + (len(stream) - length) // (length - overlap)
    assert len(pushed) == expected
    covered = pushed[-1].end - layout["start_pos"] if pushed else 0
    assert bool(tail) == (covered < len(stream))


@settings(max_examples=200, deadline=None)
@given(layout=layouts(), stream=streams, data=st.data())
def test_line_aware_cuts(layout: dict, stream: list[int], data: st.DataObject) -> None:
    """Each non-tail segment ends after the last boundary token in its eligible window, or is
    cut hard at ``length`` when that window holds no boundary token."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    pushed, tail = _run(Segmenter(**layout, boundary_ids=BOUNDARY), _chunks(stream, cuts))
    length, overlap, pos0 = layout["length"], layout["overlap"], layout["start_pos"]
    _check_tiling(pushed + tail, stream, length, overlap, layout["start_seq"], pos0)
    min_len = max(1, math.ceil(layout["min_fill"] * length - 1e-9))
    for k, s in enumerate(pushed):
        shared = 0 if k == 0 else min(overlap, pushed[k - 1].n_tokens)
        lo = max(min_len, shared + 1)
        window = stream[s.start - pos0 : s.start - pos0 + length]
        assert len(window) == length  # a segment is cut only once `length` tokens are there
        if s.tokens[-1] in BOUNDARY:
            assert lo <= s.n_tokens <= length
            assert not BOUNDARY & set(window[s.n_tokens :])  # it was the LAST eligible one
        else:
            assert s.n_tokens == length
            assert not BOUNDARY & set(window[lo - 1 :])


@settings(max_examples=100, deadline=None)
@given(layout=layouts(), data=st.data())
def test_lines_that_fit_are_never_cut(layout: dict, data: st.DataObject) -> None:
    length, overlap = layout["length"], layout["overlap"]
    lo = max(math.ceil(layout["min_fill"] * length - 1e-9), overlap + 1, 1)
    longest = length - lo + 1  # tokens per line, boundary token included
    line_lengths = data.draw(st.lists(st.integers(1, longest), max_size=60))
    stream: list[int] = []
    for n in line_lengths:
        stream += [data.draw(st.integers(2, 9)) for _ in range(n - 1)] + [data.draw(st.sampled_from(sorted(BOUNDARY)))]
    pushed, tail = _run(Segmenter(**layout, boundary_ids=BOUNDARY), [stream])
    # every segment ends at a line end (the tail too: the stream ends with one)
    assert all(s.tokens[-1] in BOUNDARY for s in pushed + tail)
    _check_tiling(pushed + tail, stream, length, overlap, layout["start_seq"], layout["start_pos"])


def test_long_line_is_hard_cut() -> None:
    seg = Segmenter(8, boundary_ids=BOUNDARY, min_fill=0.5)
    out = seg.push([5] * 20 + [0])
    assert [s.n_tokens for s in out] == [8, 8]
    (tail,) = seg.flush()
    assert tail.tokens == (5, 5, 5, 5, 0)


def test_line_aware_example() -> None:
    # lines of 3, 5 and 4 tokens; segments of 8 with min_fill 0.5 end after lines
    stream = [7, 7, 0] + [7, 7, 7, 7, 0] + [7, 7, 7, 0]
    seg = Segmenter(8, boundary_ids=BOUNDARY, min_fill=0.5)
    (first,) = seg.push(stream)
    assert (first.start, first.end) == (0, 8)
    (second,) = seg.flush()
    assert (second.start, second.end) == (8, 12)
    # with min_fill 1.0 there is no room for a line end before the hard cut
    seg = Segmenter(8, boundary_ids=BOUNDARY, min_fill=1.0)
    assert [(s.start, s.end) for s in seg.push(stream[:3] + [7] * 6)] == [(0, 8)]
    # min_fill 0.1 of 30 is 3 tokens, not 4 (no floating-point round-up)
    seg = Segmenter(30, boundary_ids=BOUNDARY, min_fill=0.1)
    assert [s.n_tokens for s in seg.push([7, 7, 0] + [7] * 28)] == [3]


def test_overlap_and_flush_examples() -> None:
    seg = Segmenter(4, overlap=2, start_seq=3, start_pos=100)
    out = seg.push([1, 2, 3, 4, 5, 6])
    assert [(s.seq, s.start, s.end, s.tokens) for s in out] == [
        (3, 100, 104, (1, 2, 3, 4)),
        (4, 102, 106, (3, 4, 5, 6)),
    ]
    assert seg.pending == (5, 6) and seg.carried == 2 and seg.position == 106 and seg.next_seq == 5
    assert seg.flush() == []  # only overlap pending: no overlap-only segment
    (tail,) = seg.push([7]) + seg.flush()
    assert (tail.seq, tail.start, tail.end, tail.tokens) == (5, 104, 107, (5, 6, 7))
    # the stream continues after a flush, overlapping the tail as usual
    (nxt,) = seg.push([8, 9])
    assert (nxt.start, nxt.end, nxt.tokens) == (105, 109, (6, 7, 8, 9))


def test_flush_mid_stream_keeps_tiling() -> None:
    rng = random.Random(0)
    stream = [rng.randrange(10) for _ in range(500)]
    seg = Segmenter(16, overlap=5, boundary_ids=BOUNDARY)
    segs: list[Segment] = []
    for a in range(0, 500, 37):
        segs += seg.push(stream[a : a + 37])
        if rng.random() < 0.5:
            segs += seg.flush()
    segs += seg.flush()
    _check_tiling(segs, stream, 16, 5, 0, 0)
    # a first tail shorter than the overlap is repeated whole by the next segment
    seg = Segmenter(8, overlap=5)
    (_tail,) = seg.push([1, 2]) + seg.flush()
    assert seg.carried == 2
    (nxt,) = seg.push(list(range(3, 9)))
    assert (nxt.start, nxt.tokens) == (0, (1, 2, 3, 4, 5, 6, 7, 8))


def test_empty_pushes() -> None:
    seg = Segmenter(3)
    assert seg.push([]) == [] and seg.flush() == [] and seg.position == 0 and seg.pending == ()
    assert seg.push(()) == []


def test_million_tokens_in_varied_chunks() -> None:
    rng = random.Random(1)
    stream = [rng.randrange(40) for _ in range(1_000_000)]
    seg = Segmenter(256, overlap=32, boundary_ids=frozenset({0}))
    segs: list[Segment] = []
    a = 0
    while a < len(stream):
        n = rng.choice([1, 7, 100, 4096, 65536])
        segs += seg.push(stream[a : a + n])
        a += n
    segs += seg.flush()
    rebuilt = list(segs[0].tokens)
    for prev, s in pairwise(segs):
        assert s.start == prev.end - 32
        rebuilt += s.tokens[32:]
    assert rebuilt == stream


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"length": 0}, "length"),
        ({"length": 2.5}, "length"),
        ({"length": 4, "overlap": 4}, "overlap"),
        ({"length": 4, "overlap": -1}, "overlap"),
        ({"length": 4, "min_fill": 0}, "min_fill"),
        ({"length": 4, "min_fill": 1.5}, "min_fill"),
        ({"length": 4, "start_seq": -1}, "start_seq"),
        ({"length": 4, "start_pos": -1}, "start_pos"),
    ],
)
def test_argument_validation(kwargs: dict, match: str) -> None:
    length = kwargs.pop("length")
    with pytest.raises(ValueError, match=match):
        Segmenter(length, **kwargs)


def test_newline_token_ids() -> None:
    tok = build_tiny_tokenizer()
    ids = newline_token_ids(tok)
    brute = {i for i in tok.get_vocab().values() if "\n" in tok.decode([i], skip_special_tokens=False)}
    assert ids == brute
    assert tok.token_to_id("Ċ") in ids  # byte-level spelling of "\n"
    assert tok.token_to_id("Ġ") not in ids
    assert set(tok.encode("a\nb").ids) & ids
    transformers = pytest.importorskip("transformers")
    assert newline_token_ids(transformers.PreTrainedTokenizerFast(tokenizer_object=tok)) == ids
    with pytest.raises(TypeError):
        newline_token_ids("not a tokenizer")


@settings(max_examples=150, deadline=None)
@given(layout=layouts(), stream=streams, data=st.data())
def test_cutter_replays_what_it_cut_live(layout: dict, stream: list[int], data: st.DataObject) -> None:
    """The one replay path: the steps a live stream took (text chunks with metadata, ids with
    and without character offsets, cuts), redone through ``Cutter.apply`` as recovery and
    ``LogReader`` do, give the same segments with the same metadata."""
    from xl3m_stream.segmenter import Cutter

    layout = {**layout, "start_pos": 0}  # a stream's own offsets, as the engine, LogReader and the evaluation cut
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    steps = []
    chars = 0
    for k, piece in enumerate(_chunks(stream, cuts)):
        text = data.draw(st.booleans())  # ids of text (one character per token here) or bare ids
        ends = [chars + i + 1 for i in range(len(piece))] if text else []
        chunk = (chars + len(piece), {"line": k}) if text else None
        chars += len(piece) if text else 0
        steps.append((piece, ends, chunk, data.draw(st.booleans())))
    live = Cutter(Segmenter(**layout))
    got_live: list[Segment] = []
    for piece, ends, chunk, cut in steps:
        if chunk is not None:
            live.chunk(*chunk)
        got_live += live.take(piece, ends or None)
        if cut:
            got_live += live.cut()
    replay = Cutter(Segmenter(**layout))
    got_replay = [s for piece, ends, chunk, cut in steps for s in replay.apply(piece, ends, chunk=chunk, cut=cut)]
    assert got_live == got_replay
    assert [s.tokens for s in got_live] == [s.tokens for s in _flat_segments(layout, steps)]
    source = [k if ends else None for k, (piece, ends, _c, _x) in enumerate(steps) for _ in piece]
    for s in got_live:  # a segment carries the lines of its text tokens, bare ids none
        lines = [k for k in source[s.start : s.end] if k is not None]
        assert s.meta == ({"line_start": min(lines), "line_end": max(lines)} if lines else None)


def _flat_segments(layout: dict, steps: list) -> list[Segment]:
    """The same steps on a bare Segmenter: the Cutter changes no cut, only adds metadata."""
    seg = Segmenter(**layout)
    out: list[Segment] = []
    for piece, _ends, _chunk, cut in steps:
        out += seg.push(piece)
        if cut:
            out += seg.flush()
    return out


def test_cutter_needs_a_segmenter_at_the_streams_start() -> None:
    from xl3m_stream.segmenter import Cutter

    with pytest.raises(ValueError, match="starts at stream offset 0, not 5"):
        Cutter(Segmenter(8, start_pos=5))  # its metadata lookups would be 5 tokens off
