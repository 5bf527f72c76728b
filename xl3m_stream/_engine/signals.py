"""The relevance signals beside the certainty, kept over the stream: the running BM25
(document frequencies of every segment scored) and the dense embeddings of stored segments;
the arrival score that fuses them, and the rank fusion at ``ask`` (docs/METHOD.md, "Fused
relevance"; the maths in :mod:`xl3m_stream.relevance`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from ..config import EngineConfig
from ..relevance import SIGNALS, ArrivalFusion, LexicalIndex, fuse_at_ask, passage_similarity, query_terms, term_counts
from ..segment import Segment
from ..store import SegmentStore, StoreEntry
from .dispatch import Dispatcher

QUESTION_VECTORS_KEPT = 64


def finite(score: float) -> float:
    """A score the store can rank (a NaN or infinite measure ranks last)."""
    return score if math.isfinite(score) else -1e30


class Signals:
    """``lexical`` / ``dense`` on as ``config.relevance`` says (``dense`` needs embedders).
    ``cut_before()``: the next segment's seq (the provisional tail's embeddings are not kept)."""

    def __init__(
        self,
        config: EngineConfig,
        tokenizer: Any,
        dispatch: Dispatcher,
        *,
        dense: bool,
        cut_before: Callable[[], int],
    ) -> None:
        self.measure = config.measure
        self._tokenizer = tokenizer
        self._dispatch = dispatch
        self._cut_before = cut_before
        self.lexical = LexicalIndex() if "lexical" in config.relevance else None
        self.dense = dense and "dense" in config.relevance
        self.fused = self.lexical is not None or self.dense
        self.fusion = ArrivalFusion([s for s in SIGNALS if s in config.relevance or s == "certainty"])
        self._fusion_key: int | None = None
        self._vectors: dict[int, Any] = {}  # seq -> passage embeddings, for segments in the store
        self._question_vectors: OrderedDict[str, Any] = OrderedDict()

    def texts(self, segments: list[Segment]) -> list[str] | None:
        """The segments' texts when a signal beside the certainty needs them."""
        if not self.fused:
            return None
        return [self._tokenizer.decode(list(seg.tokens)) for seg in segments]

    def count_terms(self, texts: list[str] | None) -> None:
        """Count scored segments into the running document frequencies (with no await before
        the journal's ``scored``, so a snapshot counts a segment exactly when it does not keep
        it aside for re-scoring)."""
        if self.lexical is not None and texts is not None:
            for text in texts:
                self.lexical.add(term_counts(text))

    def arrival_fusion(self, question_key: int) -> ArrivalFusion:
        """The stream's arrival fusion, its running scales reset when the question changed."""
        if question_key != self._fusion_key:
            self.fusion.reset()
            self._fusion_key = question_key
        return self.fusion

    async def arrival(
        self,
        segments: list[Segment],
        results: list[dict[str, float]],
        question: str | None,
        texts: list[str] | None,
        fusion: ArrivalFusion,
    ) -> list[tuple[float, dict[str, float]]]:
        """Each segment's arrival score and its signals. Against an explicit question with
        other signals on, the score is the fusion of the signals' z-scores; otherwise the measure."""
        if texts is None or question is None:
            return [(finite(r[self.measure]), r) for r in results]
        extra = await self._rows(question, segments, texts, lexical=True)
        out = []
        for r, row in zip(results, extra):
            signals = {"certainty": finite(r[self.measure])}
            if "bm25" in row:
                signals["lexical"] = row["bm25"]
            if "dense" in row:
                signals["dense"] = row["dense"]
            out.append((fusion.score(signals), {**r, **row}))
        return out

    def bm25(self, question: str, texts: list[str]) -> list[float]:
        """Each text's BM25 for the question's query terms, with the stream's running df."""
        assert self.lexical is not None
        terms = query_terms(question)
        return [self.lexical.score(terms, term_counts(text)) for text in texts]

    async def similarity(self, question: str, segments: list[Segment], texts: list[str]) -> list[float]:
        """Each segment's dense similarity to the question (its best passage's cosine)."""
        rows = await self._passage_vectors(segments, texts)
        return passage_similarity(await self._question_vector(question), rows)

    async def _question_vector(self, question: str) -> Any:
        vector = self._question_vectors.get(question)
        if vector is None:
            vector = (await self._dispatch.embed(lambda e: e.encode([question])))[0]
            self._question_vectors[question] = vector
            if len(self._question_vectors) > QUESTION_VECTORS_KEPT:
                self._question_vectors.popitem(last=False)
        else:
            self._question_vectors.move_to_end(question)
        return vector

    async def _passage_vectors(self, segments: list[Segment], texts: list[str]) -> list[Any]:
        """Each segment's passage embeddings, embedding only those not kept yet. Cut segments'
        are kept (until :meth:`prune`); the provisional tail's are not: its seq is the next
        segment's, which will hold more tokens."""
        fresh: dict[int, Any] = {}
        missing = [i for i, seg in enumerate(segments) if seg.seq not in self._vectors]
        if missing:
            vectors = await self._dispatch.embed(lambda e: e.encode_passages([texts[i] for i in missing]))
            cut_before = self._cut_before()
            for i, vector in zip(missing, vectors):
                seq = segments[i].seq
                fresh[seq] = vector
                if seq < cut_before:
                    self._vectors[seq] = vector
        return [self._vectors.get(seg.seq, fresh.get(seg.seq)) for seg in segments]

    def prune(self, store: SegmentStore) -> None:
        """Keep embeddings only for segments the store holds (bounded with the store)."""
        if len(self._vectors) > 2 * len(store) + 64:
            self._vectors = {seq: v for seq, v in self._vectors.items() if seq in store}

    async def fuse(self, candidates: list[StoreEntry], question: str) -> list[StoreEntry]:
        """Every signal against the asked question for each candidate, fused by rank: each
        signal's best first, then each one's second... (:func:`~xl3m_stream.relevance.fuse_at_ask`)."""
        lists = [[(e.scores or {}).get(self.measure, e.score) for e in candidates]]
        texts = [self._tokenizer.decode(list(e.segment.tokens)) for e in candidates]
        if self.lexical is not None:
            lists.append(self.bm25(question, texts))
        if self.dense:
            lists.append(await self.similarity(question, [e.segment for e in candidates], texts))
        fused = fuse_at_ask(lists)
        return [msgspec.structs.replace(e, score=f) for e, f in zip(candidates, fused)]

    async def for_watch(
        self, question: str, fused: bool, segments: list[Segment], texts: list[str], rows: list[dict[str, float]]
    ) -> None:
        """Add to a watch's score rows what its measure needs beside the certainty: ``dense``
        (and ``bm25`` for a fused watch). Passage vectors are kept: embedded once for all watches."""
        for row, extra in zip(rows, await self._rows(question, segments, texts, lexical=fused)):
            row.update(extra)

    async def _rows(
        self, question: str, segments: list[Segment], texts: list[str], *, lexical: bool
    ) -> list[dict[str, float]]:
        """Each segment's ``bm25`` (when ``lexical`` and the signal is on) and ``dense`` against
        ``question``: the signals beside the certainty, for arrival and for watches alike."""
        rows: list[dict[str, float]] = [{} for _ in segments]
        if lexical and self.lexical is not None:
            for row, value in zip(rows, self.bm25(question, texts)):
                row["bm25"] = value
        if self.dense:
            for row, sim in zip(rows, await self.similarity(question, segments, texts)):
                row["dense"] = sim
        return rows
