"""Scoring maths against hand computations, and the batched scorer against plain forwards."""

from __future__ import annotations

import math

import pytest
import torch

from xl3m_stream.scoring import Batch, Certainty, Scorer, build_batch, certainty, relevance


def test_certainty_matches_hand_computation() -> None:
    # one row, two question positions, vocabulary of 3
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)], [0.0, 0.0, 0.0]]])
    targets = torch.tensor([2, 0])
    cert = certainty(logits, targets)
    p0 = [1 / 6, 2 / 6, 3 / 6]
    h0 = -sum(p * math.log(p) for p in p0)
    h1 = math.log(3.0)
    assert cert.entropy[0, 0].item() == pytest.approx(h0, abs=1e-6)
    assert cert.entropy[0, 1].item() == pytest.approx(h1, abs=1e-6)
    assert cert.nll[0, 0].item() == pytest.approx(-math.log(3 / 6), abs=1e-6)
    assert cert.nll[0, 1].item() == pytest.approx(math.log(3.0), abs=1e-6)


def test_relevance_measures_by_hand() -> None:
    cert = Certainty(
        entropy=torch.tensor([[1.0, 3.0, 2.0, 2.0], [0.5, 0.5, 0.5, 0.5]]),
        nll=torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 0.0, 4.0, 4.0]]),
    )
    baseline = torch.tensor([5.0, 5.0, 5.0, 5.0])
    rel = relevance(cert, baseline, top=2)
    assert rel["entropy"].tolist() == pytest.approx([-2.0, -0.5])
    assert rel["nll"].tolist() == pytest.approx([-2.5, -3.0])
    # gains: row0 [4,3,2,1] -> mean 2.5, top2 mean 3.5; row1 [1,5,1,1] -> mean 2.0, top2 mean 3.0
    assert rel["gain"].tolist() == pytest.approx([2.5, 2.0])
    assert rel["tgain"].tolist() == pytest.approx([3.5, 3.0])
    # the token-level gain ranks row 1 close to row 0 although its mean NLL is worse
    assert rel["nll"][0] > rel["nll"][1]


def test_build_batch_left_pads_with_positions() -> None:
    batch = build_batch([[5, 6, 7], [8]], [1, 2, 3], prefix=[9], sep=[4], pad_id=0)
    assert isinstance(batch, Batch)
    # rows: 9 5 6 7 4 1 2  and  9 8 4 1 2 (left padded by 2)
    assert batch.input_ids.tolist() == [[9, 5, 6, 7, 4, 1, 2], [0, 0, 9, 8, 4, 1, 2]]
    assert batch.attention_mask.tolist() == [[1] * 7, [0, 0, 1, 1, 1, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]]
    assert batch.n_keep == 3
    padded = build_batch([[5]], [1, 2], pad_to=6)
    assert padded.input_ids.shape == (1, 6)
    with pytest.raises(ValueError):
        build_batch([[5, 6, 7]], [1, 2], pad_to=2)
    with pytest.raises(ValueError):
        build_batch([[5]], [])


def _manual_scores(loaded, scorer: Scorer, segment: list[int], question: list[int]) -> tuple[float, float]:
    """Mean NLL and entropy of the question given the segment, from one unpadded full forward."""
    row = list(scorer.prefix) + segment + list(scorer.sep) + question[:-1]
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([row])).logits[0].float()
    q = len(question)
    logp = torch.log_softmax(logits[-q:], dim=-1)
    nll = -logp[torch.arange(q), torch.tensor(question)].mean().item()
    ent = -(logp.exp() * logp).sum(-1).mean().item()
    return nll, ent


def test_scorer_matches_plain_forward_and_ignores_padding(tiny_loaded) -> None:
    tok = tiny_loaded.tokenizer
    scorer = Scorer(tiny_loaded.model, tok)
    long_seg = tok.encode("The grass is green. The sky is blue. " * 6, add_special_tokens=False)
    short_seg = tok.encode("The pass key is 12345.", add_special_tokens=False)
    question = scorer.encode_question("What is the pass key?")
    prepared = scorer.prepare(question)
    together = scorer.score([long_seg, short_seg], prepared)
    alone = scorer.score([short_seg], prepared)
    for seg, got in ((long_seg, together[0]), (short_seg, together[1])):
        nll, ent = _manual_scores(tiny_loaded, scorer, seg, list(question))
        assert got["nll"] == pytest.approx(-nll, abs=1e-4)
        assert got["entropy"] == pytest.approx(-ent, abs=1e-4)
    for name in ("entropy", "nll", "gain", "tgain"):
        assert together[1][name] == pytest.approx(alone[0][name], abs=1e-4)
    # gain is the baseline NLL minus the NLL with the segment
    base = prepared.baseline_nll.mean().item()
    assert together[1]["gain"] == pytest.approx(base + together[1]["nll"], abs=1e-4)


def test_static_shapes_pad_segments_and_rows_without_changing_scores(tiny_loaded) -> None:
    """The compiled path's padding (segments to segment_tokens, short batches to batch_size rows
    of copies) changes no score and returns one result per real segment."""
    tok = tiny_loaded.tokenizer
    plain = Scorer(tiny_loaded.model, tok)
    static = Scorer(tiny_loaded.model, tok, pad_to_segment=48, pad_rows=4)
    segments = [
        tok.encode("The pass key is 12345. Remember it.", add_special_tokens=False),
        tok.encode("The grass is green and the sky is blue.", add_special_tokens=False),
    ]
    question = plain.encode_question("What is the pass key?")
    want = plain.score(segments, plain.prepare(question))
    got = static.score(segments, static.prepare(question))
    assert len(got) == len(segments)
    for a, b in zip(want, got):
        for name in ("entropy", "nll", "gain", "tgain"):
            assert b[name] == pytest.approx(a[name], abs=1e-4)
    # a batch over pad_rows is scored as it is (no rows dropped)
    many = static.score(segments * 3, static.prepare(question))
    assert [m["nll"] for m in many] == pytest.approx([w["nll"] for w in want] * 3, abs=1e-4)


def test_certainty_keeps_extreme_logits_finite() -> None:
    """One exp over the vocabulary (the fast form) against log_softmax, on peaked and flat rows."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 1000) * 5
    logits[0, :, 7] += 80.0  # almost certain: entropy near 0, no negative rounding
    targets = torch.tensor([7, 1, 2, 3])
    cert = certainty(logits.to(torch.bfloat16), targets)
    logp = torch.log_softmax(logits.to(torch.bfloat16).float(), dim=-1)
    want_h = -(logp.exp() * logp).sum(-1)
    want_nll = -logp.gather(-1, targets.view(1, -1, 1).expand(3, -1, 1)).squeeze(-1)
    assert torch.isfinite(cert.entropy).all() and (cert.entropy >= 0).all()
    assert torch.allclose(cert.entropy, want_h, atol=1e-4)
    assert torch.allclose(cert.nll, want_nll, atol=1e-4)


def test_prepared_questions_are_cached(tiny_loaded) -> None:
    scorer = Scorer(tiny_loaded.model, tiny_loaded.tokenizer)
    a = scorer.prepare((5, 6, 7))
    b = scorer.prepare([5, 6, 7])
    c = scorer.prepare((5, 6))
    assert a is b and a.qid != c.qid
    with pytest.raises(ValueError):
        scorer.prepare(())
