"""Relevance of segments to a question: the model's certainty about the question given the segment.

For each segment s and question q (token ids), one forward pass over the row
``[prefix ; s ; sep ; q[:-1]]`` yields the predicted distributions at q's positions. From them:

* ``entropy`` -- mean entropy of those distributions (the XL3M paper's measure),
* ``nll``     -- mean negative log-likelihood of q's true tokens,
* ``gain``    -- mean NLL of q without the segment minus with it (comparable across questions),
* ``tgain``   -- mean of the ``k`` largest per-token NLL gains (contrastive, token level: a segment
  that makes a few question tokens much more predictable, e.g. the answer-bearing ones).

Every measure is reported as a *relevance*: higher means more relevant (so entropy and NLL are
negated). Batches are left-padded with explicit position ids, and logits are computed only at
q's positions (``logits_to_keep``), so the vocabulary projection costs ``len(q)`` rows per segment.

This module is plain synchronous code: no event loop, no store. The engine calls
:meth:`Scorer.score` from a worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MEASURES = ("entropy", "nll", "gain", "tgain")
SEPARATOR = "\n\n"
"""Text between a segment and the question in a scoring row (and in the reader's prompt)."""


@dataclass(frozen=True)
class Batch:
    """One left-padded scoring batch."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, L] long
    n_keep: int  # number of trailing positions whose logits are needed (= len(question))


@dataclass(frozen=True)
class Certainty:
    """Per-position certainty at the question's positions, for each row of a batch."""

    entropy: torch.Tensor  # [B, Q] float32, nats
    nll: torch.Tensor  # [B, Q] float32, nats


@dataclass(frozen=True)
class PreparedQuestion:
    """A question ready for scoring: its ids and the baseline NLL of each token with no segment."""

    qid: int
    ids: tuple[int, ...]
    baseline_nll: torch.Tensor  # [Q] float32 (CPU)


def build_batch(
    segments: Sequence[Sequence[int]],
    question: Sequence[int],
    *,
    prefix: Sequence[int] = (),
    sep: Sequence[int] = (),
    pad_id: int = 0,
    pad_to: int | None = None,
) -> Batch:
    """Rows ``prefix + segment + sep + question[:-1]``, left-padded to the longest (or ``pad_to``).

    Position ids count only real tokens (0 at each row's first real token), so a segment's
    scores do not depend on how much padding its batch needed.
    """
    if len(question) < 1:
        raise ValueError("question must have at least one token")
    if not segments:
        raise ValueError("batch needs at least one segment")
    tail = list(sep) + list(question[:-1])
    rows = [list(prefix) + list(s) + tail for s in segments]
    width = max(len(r) for r in rows)
    if pad_to is not None:
        if pad_to < width:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({width})")
        width = pad_to
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, n_keep=len(question))


def certainty(logits: torch.Tensor, targets: torch.Tensor) -> Certainty:
    """Entropy of each predicted distribution and NLL of each target token.

    ``logits``: [B, Q, V] (any float dtype; computed in float32); ``targets``: [Q] token ids.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    index = targets.to(logp.device).view(1, -1, 1).expand(logp.shape[0], -1, 1)
    nll = -logp.gather(-1, index).squeeze(-1)
    return Certainty(entropy=entropy, nll=nll)


def relevance(cert: Certainty, baseline_nll: torch.Tensor, *, top: int = 3) -> dict[str, torch.Tensor]:
    """All measures for each row, as relevance (higher = more relevant): name -> [B] float32."""
    baseline = baseline_nll.to(cert.nll.device).view(1, -1)
    gains = baseline - cert.nll
    k = min(top, gains.shape[1])
    return {
        "entropy": -cert.entropy.mean(dim=1),
        "nll": -cert.nll.mean(dim=1),
        "gain": gains.mean(dim=1),
        "tgain": gains.topk(k, dim=1).values.mean(dim=1),
    }


class Scorer:
    """Scores segments against questions with one causal LM on one device.

    ``score`` is thread-safe only in the sense that torch is; the engine never runs two calls
    on the same scorer at once unless ``device_concurrency`` allows it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        tgain_top: int = 3,
        pad_to_segment: int | None = None,
        compiled: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.tgain_top = tgain_top
        self.prefix: tuple[int, ...] = bos_prefix(tokenizer)
        self.sep: tuple[int, ...] = tuple(tokenizer.encode(SEPARATOR, add_special_tokens=False))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id: int = int(pad if pad is not None else 0)
        self.pad_to_segment = pad_to_segment
        self._forward = compiled if compiled is not None else model
        self._questions: OrderedDict[tuple[int, ...], PreparedQuestion] = OrderedDict()
        self._next_qid = 1

    # --- questions ---------------------------------------------------------------------
    def encode_question(self, text: str) -> tuple[int, ...]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return tuple(int(i) for i in ids)

    def prepare(self, ids: Sequence[int]) -> PreparedQuestion:
        """The question with its no-segment baseline (computed once; the last 64 are cached)."""
        key = tuple(int(i) for i in ids)
        if not key:
            raise ValueError("question has no tokens")
        hit = self._questions.get(key)
        if hit is not None:
            self._questions.move_to_end(key)
            return hit
        batch = build_batch([()], key, prefix=self.prefix, sep=self.sep or (self.pad_id,), pad_id=self.pad_id)
        cert = self._certainty(batch, key)
        prepared = PreparedQuestion(qid=self._next_qid, ids=key, baseline_nll=cert.nll[0].float().cpu())
        self._next_qid += 1
        self._questions[key] = prepared
        if len(self._questions) > 64:
            self._questions.popitem(last=False)
        return prepared

    # --- scoring -----------------------------------------------------------------------
    def score(self, segments: Sequence[Sequence[int]], question: PreparedQuestion) -> list[dict[str, float]]:
        """Relevance of each segment to ``question``: one dict of all measures per segment."""
        pad_to = None
        if self.pad_to_segment is not None and all(len(s) <= self.pad_to_segment for s in segments):
            pad_to = len(self.prefix) + self.pad_to_segment + len(self.sep) + len(question.ids) - 1
        batch = build_batch(segments, question.ids, prefix=self.prefix, sep=self.sep, pad_id=self.pad_id, pad_to=pad_to)
        cert = self._certainty(batch, question.ids)
        rel = relevance(cert, question.baseline_nll, top=self.tgain_top)
        columns = {name: values.tolist() for name, values in rel.items()}
        return [{name: columns[name][i] for name in MEASURES} for i in range(len(segments))]

    @torch.inference_mode()
    def _certainty(self, batch: Batch, question: Sequence[int]) -> Certainty:
        out = self._forward(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            position_ids=batch.position_ids.to(self.device),
            logits_to_keep=batch.n_keep,
            use_cache=False,
        )
        targets = torch.tensor(question, dtype=torch.long, device=self.device)
        return certainty(out.logits[:, -batch.n_keep :, :], targets)


def bos_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The BOS token if the tokenizer puts one in front of ordinary text, else nothing."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ()
    probe = tokenizer.encode("a", add_special_tokens=True)
    return (int(bos),) if probe and probe[0] == bos else ()
