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

Several questions over the same segments (a watched question, the engine's own) go through
:meth:`Scorer.score_many`: the segments' forward pass runs once, keeping its KV cache, and each
question then costs a forward of its own tokens only, continuing from that cache.

This module is plain synchronous code: no event loop, no store. The engine calls
:meth:`Scorer.score` / :meth:`Scorer.score_many` from a worker thread.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import MEASURES

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
    # One exp over the vocabulary instead of two (log_softmax, then exp for the entropy): with
    # e = exp(x - max), s = sum(e) and lse = log(s) + max, the entropy is lse - sum(e * x) / s and
    # the NLL of a token is lse - x[token]. On a CPU this is most of the engine's own work per batch.
    x = logits.float()
    top = x.amax(dim=-1, keepdim=True)
    e = (x - top).exp_()
    total = e.sum(dim=-1)
    lse = total.log() + top.squeeze(-1)
    entropy = (lse - torch.linalg.vecdot(e, x) / total).clamp_min_(0.0)
    index = targets.to(x.device).view(1, -1, 1).expand(x.shape[0], -1, 1)
    nll = lse - x.gather(-1, index).squeeze(-1)
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
        pad_rows: int | None = None,
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
        self.pad_rows = pad_rows  # with pad_to_segment: shorter batches padded to this many rows
        self._forward = compiled if compiled is not None else model
        self._questions: OrderedDict[tuple[int, ...], PreparedQuestion] = OrderedDict()
        self._next_qid = 1
        # transformers renamed `past_key_values` to `cache`; pass whichever this model's forward takes
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._shared_prefix = True  # score_many: reuse each segment's KV cache across questions

    @property
    def forward(self) -> Any:
        """The callable used for forward passes: the model, or its compiled version."""
        return self._forward

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
        rows = list(segments)
        if self.pad_to_segment is not None and all(len(s) <= self.pad_to_segment for s in segments):
            pad_to = len(self.prefix) + self.pad_to_segment + len(self.sep) + len(question.ids) - 1
            if self.pad_rows is not None and 0 < len(rows) < self.pad_rows:
                # a short batch takes the full batch's shape (copies of its first segment, whose
                # scores are dropped), so a compiled forward sees one shape and never recompiles
                rows += [rows[0]] * (self.pad_rows - len(rows))
        batch = build_batch(rows, question.ids, prefix=self.prefix, sep=self.sep, pad_id=self.pad_id, pad_to=pad_to)
        cert = self._certainty(batch, question.ids)
        rel = relevance(cert, question.baseline_nll, top=self.tgain_top)
        columns = {name: values.tolist() for name, values in rel.items()}
        return [{name: columns[name][i] for name in MEASURES} for i in range(len(segments))]

    def score_many(
        self, segments: Sequence[Sequence[int]], questions: Sequence[PreparedQuestion]
    ) -> list[list[dict[str, float]]]:
        """Relevance of each segment to each question, computing each segment once.

        Returns ``result[j][i]``: the measures of segment ``i`` for ``questions[j]``, equal (up
        to float rounding) to ``score(segments, questions[j])[i]``.

        One forward pass over the left-padded rows ``prefix + segment + sep`` keeps their KV
        cache (and the logits at the last position, which predict every question's first
        token); then, per question, a forward of ``question[:-1]`` alone continues every row
        from that cache, with position ids continuing from each row's real length. The cache
        is rewound after each question, so a question costs ``len(question) - 1`` tokens per
        segment instead of a whole segment. A single question takes the plain :meth:`score`
        path (the one ``torch.compile`` applies to). Models whose cache cannot be rewound
        fall back to one :meth:`score` per question.
        """
        if not questions:
            return []
        if len(questions) == 1 or not self._shared_prefix:
            return [self.score(segments, q) for q in questions]
        if not segments:
            raise ValueError("batch needs at least one segment")
        try:
            return self._score_shared(segments, questions)
        except _CacheRewindError:
            self._shared_prefix = False
            return [self.score(segments, q) for q in questions]

    @torch.inference_mode()
    def _score_shared(
        self, segments: Sequence[Sequence[int]], questions: Sequence[PreparedQuestion]
    ) -> list[list[dict[str, float]]]:
        from transformers import DynamicCache

        # rows prefix + segment + sep: build_batch with a one-token "question" whose [:-1] is empty
        sep = self.sep or (self.pad_id,)
        batch = build_batch(segments, (0,), prefix=self.prefix, sep=sep, pad_id=self.pad_id)
        width = batch.input_ids.shape[1]
        mask = batch.attention_mask.to(self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=mask,
            position_ids=batch.position_ids.to(self.device),
            logits_to_keep=1,
            use_cache=True,
            **{self._cache_arg: cache},
        )
        first = out.logits[:, -1:, :]  # predicts every question's first token
        lengths = mask.sum(dim=1, keepdim=True)  # real tokens per row: the next position id
        results = []
        for q in questions:
            tail = len(q.ids) - 1
            if tail == 0:
                logits = first
            else:
                ids = torch.tensor([q.ids[:-1]], dtype=torch.long, device=self.device).expand(len(segments), -1)
                ones = torch.ones((len(segments), tail), dtype=mask.dtype, device=self.device)
                step = torch.arange(tail, device=self.device).view(1, -1)
                cont = self.model(
                    input_ids=ids,
                    attention_mask=torch.cat([mask, ones], dim=1),
                    position_ids=lengths + step,
                    logits_to_keep=tail,
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
                logits = torch.cat([first, cont.logits[:, -tail:, :].to(first.dtype)], dim=1)
                _rewind(cache, width)
            targets = torch.tensor(q.ids, dtype=torch.long, device=self.device)
            rel = relevance(certainty(logits, targets), q.baseline_nll, top=self.tgain_top)
            columns = {name: values.tolist() for name, values in rel.items()}
            results.append([{name: columns[name][i] for name in MEASURES} for i in range(len(segments))])
        return results

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


class _CacheRewindError(RuntimeError):
    """The model's KV cache could not be cut back to the shared prefix."""


def _rewind(cache: Any, length: int) -> None:
    """Cut ``cache`` back to its first ``length`` positions (a negative ``crop`` removes tokens,
    in transformers 4.x and 5.x alike)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        try:
            cache.crop(-extra)
        except (AttributeError, ValueError, RuntimeError, NotImplementedError) as exc:
            raise _CacheRewindError(str(exc)) from exc
    if cache.get_seq_length() != length:
        raise _CacheRewindError(f"cache holds {cache.get_seq_length()} positions after rewinding to {length}")


def bos_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The BOS token if the tokenizer puts one in front of ordinary text, else nothing."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ()
    probe = tokenizer.encode("a", add_special_tokens=True)
    return (int(bos),) if probe and probe[0] == bos else ()
