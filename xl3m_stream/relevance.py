"""Relevance signals beside the model's certainty, and how they are fused.

XL3M's certainty links a question to its evidence well when they share words and the scorer
is strong; a small scorer on a paraphrased question, or on log lines that all look alike,
does not. Two more signals are computed per segment:

* ``lexical``: BM25 over the stream itself. Document frequencies are kept *running* (every
  segment that arrives is counted) in bounded memory: a count-min sketch of ``rows x buckets``
  counters (4 MiB by default) whatever the stream's vocabulary, so a term's df is never
  under-counted and rarely over-counted;
* ``dense``: the cosine similarity of sentence embeddings (:mod:`xl3m_stream.embedding`).

**On arrival** (an explicit question is set) each signal's value is normalised against that
signal's running distribution (a z-score over the recent segments, :class:`ArrivalFusion`) and
the segment's arrival score is the *largest* of them: a segment strong in any one signal ranks
high in the bounded store, so evidence that only one signal sees survives eviction.
**At ask** every candidate gets every signal against the asked question, and their ranks are
fused (reciprocal rank fusion, :func:`reciprocal_rank_fusion`).

Plain synchronous code, no event loop and no model: the engine owns the embedder and calls
these from its threads.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources

import msgspec
import numpy as np
import snowballstemmer

from .running import RunningScores

SIGNALS = ("certainty", "lexical", "dense")
"""The relevance signals; ``certainty`` (the model's, XL3M's own) is always on."""
RRF_K = 60
"""Reciprocal rank fusion constant (the usual 60: ranks beyond the first few weigh alike)."""
MIN_STATS = 2
"""Arrivals a signal must have seen before its z-score counts (fewer: the z-score is 0). Kept
small on purpose: evidence early in a stream must be able to stand out too."""
SPREAD_FLOOR = {"certainty": 0.05, "lexical": 0.5, "dense": 0.02}
"""Smallest spread a signal's z-score divides by, in the signal's own units (nats per token,
BM25 points, cosine). Without it a signal that was constant so far (BM25 is 0 on every segment
without a question word) gives the first segment with any match, however weak, a z-score of
millions, which then outranks the evidence for the rest of the stream; with it a z-score of 1
means at least this much above the mean: a tenth of a typical spread of the certainty, a
fraction of one matched term's BM25, a small step in cosine."""

_WORD = re.compile(r"\w+")


def _stopwords() -> frozenset[str]:
    text = resources.files("xl3m_stream").joinpath("data/stopwords.txt").read_text(encoding="utf-8")
    return frozenset(w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith("#"))


STOPWORDS = _stopwords()
"""English function words (``data/stopwords.txt``): left out of lexical queries. In a log,
"is" and "the" are rare, so BM25 weighs them as strongly as a real match: "Is one of the
storage drives failing?" ranked two ``debconf: ... TERM is not set, so the dialog frontend is
not usable`` segments first of 551 on a real apt log, on "is" and "the" alone."""


def words(text: str) -> list[str]:
    """Lower-case word tokens, split at punctuation and whitespace (``"req=ab12"`` -> ``["req", "ab12"]``)."""
    return _WORD.findall(text.lower())


ANALYZER = "snowball-english"
"""How text becomes lexical terms: :func:`words`, each reduced to its Snowball English (Porter2)
stem, so "dependency problems" matches "unmet dependencies" and "failing" matches "failed".
Recorded in a :class:`LexicalState`: frequencies counted under another analyzer are not reused."""

_stem_cached = lru_cache(maxsize=1 << 16)(snowballstemmer.stemmer("english").stemWord)


def stem(word: str) -> str:
    """The Snowball English stem of one lower-case word (``"dependencies"`` -> ``"depend"``);
    the most recent 65,536 distinct words are cached (a stream repeats its words)."""
    return _stem_cached(word)


def query_terms(question: str) -> list[str]:
    """The terms a lexical query for ``question`` searches for: the stems of its words less
    :data:`STOPWORDS` (of all its words if nothing else is left, so "Is it?" still queries something)."""
    found = words(question)
    return [stem(t) for t in ([t for t in found if t not in STOPWORDS] or found)]


class LexicalState(msgspec.Struct, frozen=True, kw_only=True):
    """A :class:`LexicalIndex` at one point: enough to resume it (counters zlib-compressed)."""

    documents: int
    total_length: int
    rows: int
    buckets: int
    counts: bytes
    analyzer: str = "words"
    """How the counted terms were made (:data:`ANALYZER`); ``"words"`` (unstemmed words) in a
    snapshot written before stemming, which recorded no analyzer."""


class LexicalIndex:
    """BM25 (Lucene's variant, ``k1=1.5, b=0.75``) with running document frequencies.

    ``add`` counts one arriving segment; ``score`` scores a segment's term counts for a query
    with the frequencies as they are now. The df of a term is the minimum over ``rows``
    independent hashed counters (a count-min sketch): bounded memory, never an under-count.
    """

    def __init__(self, *, rows: int = 2, buckets: int = 1 << 19, k1: float = 1.5, b: float = 0.75) -> None:
        if rows < 1 or buckets < 16 or buckets & (buckets - 1):
            raise ValueError("rows must be >= 1 and buckets a power of two >= 16")
        self.rows, self.buckets, self.k1, self.b = rows, buckets, k1, b
        self._counts = np.zeros((rows, buckets), dtype=np.uint32)
        self.documents = 0
        self.total_length = 0

    def _slots(self, term: str) -> list[int]:
        data = term.encode("utf-8", "surrogatepass")
        return [zlib.crc32(data, 0x9E3779B1 * (r + 1) & 0xFFFFFFFF) & (self.buckets - 1) for r in range(self.rows)]

    def add(self, terms: Mapping[str, int]) -> None:
        """Count one segment (its distinct terms, and its length for the average)."""
        self.documents += 1
        self.total_length += sum(terms.values())
        for term in terms:
            for r, slot in enumerate(self._slots(term)):
                self._counts[r, slot] += 1

    def df(self, term: str) -> int:
        return int(min(self._counts[r, slot] for r, slot in enumerate(self._slots(term))))

    def idf(self, term: str) -> float:
        df = min(self.df(term), self.documents)
        return math.log(1.0 + (self.documents - df + 0.5) / (df + 0.5))

    def score(self, query: Iterable[str], terms: Mapping[str, int]) -> float:
        """BM25 of a segment (its term counts) for the query terms (each distinct term once)."""
        if not self.documents:
            return 0.0
        length = sum(terms.values())
        avg = self.total_length / self.documents or 1.0
        norm = self.k1 * (1.0 - self.b + self.b * length / avg)
        total = 0.0
        for term in set(query):
            tf = terms.get(term, 0)
            if tf:
                total += self.idf(term) * tf / (tf + norm)  # Lucene: no (k1 + 1) factor
        return total

    def state(self) -> LexicalState:
        return LexicalState(
            documents=self.documents,
            total_length=self.total_length,
            rows=self.rows,
            buckets=self.buckets,
            counts=zlib.compress(self._counts.tobytes(), 1),
            analyzer=ANALYZER,
        )

    @classmethod
    def from_state(cls, state: LexicalState) -> LexicalIndex:
        """The index ``state`` describes. Raises ValueError when its counters are damaged or were
        counted under another analyzer than :data:`ANALYZER` (its frequencies would not match)."""
        if state.analyzer != ANALYZER:
            raise ValueError(f"lexical state: terms made by {state.analyzer!r}, this version makes {ANALYZER!r}")
        index = cls(rows=state.rows, buckets=state.buckets)
        counts = np.frombuffer(zlib.decompress(state.counts), dtype=np.uint32)
        if counts.size != state.rows * state.buckets:
            raise ValueError("lexical state: counters do not match its shape")
        index._counts = counts.reshape(state.rows, state.buckets).copy()
        index.documents, index.total_length = state.documents, state.total_length
        return index


def term_counts(text: str) -> Counter[str]:
    """How often each term (:data:`ANALYZER`) occurs in ``text``: what :class:`LexicalIndex` counts."""
    return Counter(stem(w) for w in words(text))


COMBINE = ("max", "top2")
"""How :class:`ArrivalFusion` combines a segment's z-scores: the largest, or the two largest summed."""


class ArrivalFusion:
    """Arrival scores: each signal as a z-score against its own recent values, combined.

    ``combine="max"`` (the store's): the largest z-score counts, so a segment strong in any one
    signal ranks high and survives eviction. ``combine="top2"`` (a fused watch's): the two
    largest z-scores add up, so an alert needs two signals to agree (one signal's noise alone,
    a rare word or a confident guess, is not enough), while the weakest signal has no veto: a
    paraphrase the certainty does not see (its z-score below zero) is judged by the two that
    do. (A plain sum let that blind signal pull real incidents under routine near misses:
    docs/MONITORING.md.) With one signal it is that signal's z-score, with two their sum.

    One instance per question: :meth:`reset` when the question that arriving segments are
    scored against changes (its scales change with it).
    """

    def __init__(self, signals: Sequence[str], window: int = 4096, *, combine: str = "max") -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        self.signals = tuple(signals)
        self.window = window
        self.combine = combine
        self._floor = {s: SPREAD_FLOOR.get(s, 0.0) or 1e-9 for s in self.signals}
        self._stats = {s: RunningScores(window) for s in self.signals}

    def reset(self) -> None:
        self._stats = {s: RunningScores(self.window) for s in self.signals}

    def score(self, values: Mapping[str, float]) -> float:
        """The arrival score of one segment's signal ``values`` (then they join the statistics)."""
        zs = []
        for name in self.signals:
            stats, value = self._stats[name], values[name]
            z = 0.0
            if len(stats) >= MIN_STATS:
                z = (value - stats.mean) / max(stats.std, self._floor[name])
            zs.append(z)
            stats.add(value)
        if self.combine == "max":
            return max(zs)
        return math.fsum(sorted(zs)[-2:])


def passage_similarity(question: np.ndarray, segments: Sequence[np.ndarray]) -> list[float]:
    """Each segment's dense similarity: the best cosine of its passages' unit vectors (rows)."""
    return [float(np.max(rows @ question)) if len(rows) else -1.0 for rows in segments]


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


def fuse_at_ask(lists: Sequence[Sequence[float]]) -> list[float]:
    """The candidates' fused relevance at ``ask``, from one score list per signal (certainty
    first); higher = better. The one rule the engine ranks by (and ``benchmarks/fusion_offline.py``
    calls ``engine``)."""
    return interleaved_rank_fusion(lists)


def interleaved_rank_fusion(rankings: Sequence[Sequence[float]], k: int = RRF_K) -> list[float]:
    """Fused score that orders items by their **best** rank in any list, ties broken by RRF.

    Filling a budget best-first by it takes each signal's first choice, then each one's second,
    and so on: evidence that one signal ranks first is kept however the others rank it (plain
    RRF averages it away: a paraphrased needle ranked 2nd by the embedding and 26th and 39th by
    the certainty and BM25 came 10th of 65). Higher = better: ``-best_rank`` plus the RRF score
    scaled below 1, so RRF only orders items of the same best rank.
    """
    if not rankings:
        return []
    ranks = _ranks_of(rankings)
    scale = (k + 1) / (len(rankings) + 1)  # RRF is at most len(rankings) / (k + 1)
    return [f * scale - min(r[i] for r in ranks) for i, f in enumerate(_rrf(ranks, k))]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[float]], k: int = RRF_K) -> list[float]:
    """Fused score ``sum(1 / (k + rank))`` over the score lists (each: higher = better).

    Ranks are 1-based; items with equal scores in a list share their average rank, so a
    signal that cannot tell items apart (BM25 zeros) does not favour any of them.
    """
    if not rankings:
        return []
    return _rrf(_ranks_of(rankings), k)


def _ranks_of(rankings: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each score list's ranks (:func:`_ranks`); the lists must be of one length."""
    n = len(rankings[0])
    if any(len(r) != n for r in rankings):
        raise ValueError("every score list must have one score per item")
    return [_ranks(scores) for scores in rankings]


def _rrf(ranks: Sequence[Sequence[float]], k: int) -> list[float]:
    """``sum(1 / (k + rank))`` per item over the rank lists."""
    return [sum(1.0 / (k + r[i]) for r in ranks) for i in range(len(ranks[0]))]
