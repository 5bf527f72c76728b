"""Shared-prefix scoring: one pass over the segments, one short pass per question, same scores."""

from __future__ import annotations

import functools

import pytest

from xl3m_stream import scoring
from xl3m_stream.scoring import MEASURES, Scorer

TOL = 1e-4


def _segments(tok) -> list[list[int]]:
    texts = [
        "The grass is green. The sky is blue. " * 5,  # long
        "The pass key is 12345.",
        "x",  # one token: much left padding
        "2024-05-01T12:00:01Z ERROR storage disk failure on /dev/sdb: I/O error\n",
    ]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def _assert_same(many, separate) -> None:
    assert len(many) == len(separate)
    for row_many, row_sep in zip(many, separate):
        assert len(row_many) == len(row_sep)
        for got, want in zip(row_many, row_sep):
            assert set(got) == set(MEASURES)
            for name in MEASURES:
                assert got[name] == pytest.approx(want[name], abs=TOL), name


def test_shared_prefix_equals_separate_passes(tiny_loaded) -> None:
    scorer = Scorer(tiny_loaded.model, tiny_loaded.tokenizer)
    segments = _segments(tiny_loaded.tokenizer)
    texts = ["What is the pass key?", "Which service reported the disk failure?", "a", "What is the pass key?"]
    questions = [scorer.prepare(scorer.encode_question(q)) for q in texts]
    assert len(questions[2].ids) == 1  # a one-token question needs no continuation pass
    many = scorer.score_many(segments, questions)
    _assert_same(many, [scorer.score(segments, q) for q in questions])
    assert scorer._shared_prefix  # the shared path was used, not the fallback


def test_shared_prefix_does_not_depend_on_the_batch(tiny_loaded) -> None:
    scorer = Scorer(tiny_loaded.model, tiny_loaded.tokenizer)
    segments = _segments(tiny_loaded.tokenizer)
    questions = [scorer.prepare(scorer.encode_question(q)) for q in ("What is the pass key?", "Which service?")]
    together = scorer.score_many(segments, questions)
    for i, seg in enumerate(segments):
        alone = scorer.score_many([seg], questions)
        _assert_same([[row[i]] for row in together], alone)


def test_calls_the_model_once_per_question_plus_one(tiny_loaded, monkeypatch) -> None:
    calls: list[tuple[int, ...]] = []
    model = tiny_loaded.model
    original = type(model).forward

    @functools.wraps(original)  # keeps the signature: the scorer picks its cache argument from it
    def counting(self, *args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    scorer = Scorer(model, tiny_loaded.tokenizer)
    segments = _segments(tiny_loaded.tokenizer)
    questions = [scorer.prepare(scorer.encode_question(q)) for q in ("What is the pass key?", "Which service?", "a")]
    calls.clear()
    scorer.score_many(segments, questions)
    width = max(len(scorer.prefix) + len(s) + len(scorer.sep) for s in segments)
    # the segments once, then each question's tokens but the last (none for a one-token question)
    assert calls == [
        (len(segments), width),
        (len(segments), len(questions[0].ids) - 1),
        (len(segments), len(questions[1].ids) - 1),
    ]


def test_single_question_and_empty_cases(tiny_loaded) -> None:
    scorer = Scorer(tiny_loaded.model, tiny_loaded.tokenizer)
    segments = _segments(tiny_loaded.tokenizer)
    q = scorer.prepare(scorer.encode_question("What is the pass key?"))
    assert scorer.score_many(segments, [q]) == [scorer.score(segments, q)]
    assert scorer.score_many(segments, []) == []
    with pytest.raises(ValueError):
        scorer.score_many([], [q, q])


def test_falls_back_when_the_cache_cannot_be_rewound(tiny_loaded, monkeypatch) -> None:
    def refuse(cache, length):
        raise scoring._CacheRewindError("this cache cannot be cropped")

    monkeypatch.setattr(scoring, "_rewind", refuse)
    scorer = Scorer(tiny_loaded.model, tiny_loaded.tokenizer)
    segments = _segments(tiny_loaded.tokenizer)
    questions = [scorer.prepare(scorer.encode_question(q)) for q in ("What is the pass key?", "Which service?")]
    many = scorer.score_many(segments, questions)
    assert not scorer._shared_prefix  # remembered: later batches go straight to separate passes
    _assert_same(many, [scorer.score(segments, q) for q in questions])
