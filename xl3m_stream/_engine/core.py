"""The core step: one batch of pending segments scored (against its question and every
watched one, in one pass), offered to the store, checked by the watches, counted. It returns
what happened as events; the facade emits them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from ..config import EngineConfig
from ..errors import ScoringError
from ..events import Alert, ErrorEvent, Event, SegmentEvicted, SegmentKept, SegmentScored
from ..metrics import Metrics
from ..segment import Segment
from ..store import SegmentStore
from .dispatch import Dispatcher
from .intake import Intake
from .journal import Journal
from .questions import Questions
from .queue import Pending, ScoringQueue
from .signals import Signals
from .watches import Watches

COUNTERS = ("segments_cut", "segments_scored", "segments_failed", "batches", "scored_tokens", "asks", "errors")
"""The engine's counters (one dict, shared by the stages that count; kept in snapshots)."""


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    explain: list[tuple[Alert, Segment]] = field(default_factory=list)
    """Alerts whose watch wants them explained before they are emitted."""


class Core:
    def __init__(
        self,
        config: EngineConfig,
        intake: Intake,
        queue: ScoringQueue,
        dispatch: Dispatcher,
        signals: Signals,
        store: SegmentStore,
        questions: Questions,
        watches: Watches,
        journal: Journal,
        counters: dict[str, int],
    ) -> None:
        self._config = config
        self._intake = intake
        self._queue = queue
        self._dispatch = dispatch
        self._signals = signals
        self._store = store
        self._questions = questions
        self._watches = watches
        self._journal = journal
        self._counters = counters
        self.explicit: tuple[str, tuple[int, ...]] | None = None  # the question set (None: rolling)
        self.failed: list[Segment] = []

    def question_of(self, batch: list[Pending]) -> tuple[int, ...]:
        if batch[0].question is not None:
            return batch[0].question
        if self.explicit is not None:
            return self.explicit[1]
        # the question was unset while the batch waited: fall back to rolling
        return tuple(self._intake.last(self._config.question_tokens)) or batch[0].segment.tokens[:1]

    async def score_batch(self, batch: list[Pending], turn: anyio.Event | None = None) -> Outcome:
        """Score ``batch``, then (once ``turn`` is set: the batch cut before it is through) take
        the scores in: with several batches in flight, the running statistics (BM25's document
        frequencies, the signals' z-scores) and the store still see the batches in stream order."""
        out = Outcome()
        q_ids = self.question_of(batch)
        segments = [p.segment for p in batch]
        watched = self._watches.questions()
        questions = list(dict.fromkeys([q_ids, *watched.values()]))
        try:
            scored = dict(zip(questions, await self._dispatch.score_many(segments, questions)))
        except ScoringError as exc:
            if turn is not None:
                await turn.wait()
            self._counters["segments_failed"] += len(segments)
            self.failed.extend(segments)
            out.events.append(
                ErrorEvent(time=time.time(), kind="scoring", message=str(exc), seqs=[s.seq for s in segments])
            )
            return out
        if turn is not None:
            await turn.wait()
        results, rows = scored[q_ids], {wid: scored[ids] for wid, ids in watched.items()}
        key = self._questions.key(q_ids)
        now = time.time()
        texts = self._signals.texts(segments)
        explicit = self.explicit
        question = explicit[0] if explicit is not None and explicit[1] == q_ids else None
        fusion = self._signals.arrival_fusion(key) if question is not None else self._signals.fusion
        arrivals = await self._signals.arrival(segments, results, question, texts, fusion)
        for seg, (score, scores) in zip(segments, arrivals):
            out.events.append(
                SegmentScored(
                    time=now, seq=seg.seq, start=seg.start, end=seg.end, score=score, scores=scores, question_id=key
                )
            )
            offer = self._store.offer(seg, score, question_id=key, scores=scores)
            for gone in offer.evicted:
                s = gone.segment
                out.events.append(SegmentEvicted(time=now, seq=s.seq, start=s.start, end=s.end, score=gone.score))
            if offer.kept:
                out.events.append(SegmentKept(time=now, seq=seg.seq, start=seg.start, end=seg.end, score=score))
        await self._watches.add_signals(segments, texts, rows)
        self._signals.prune(self._store)
        for alert, seg, explain in self._watches.check(segments, rows, texts):
            if explain and self._watches.begin_explaining():
                out.explain.append((alert, seg))
            else:
                out.events.append(alert)
        # no await from here: a snapshot counts these segments' terms exactly when it does not
        # keep them aside for re-scoring
        self._signals.count_terms(texts)
        self._queue.scored(segments)
        self._journal.scored(len(segments))
        self._counters["segments_scored"] += len(segments)
        self._counters["batches"] += 1
        self._counters["scored_tokens"] += sum(s.n_tokens for s in segments)
        return out

    def metrics(self) -> Metrics:
        """Counters and timings of every stage (see :mod:`xl3m_stream.metrics`)."""
        dispatch = self._dispatch
        return Metrics(
            time=time.time(),
            tokens_in=self._intake.position,
            queue_depth=len(self._queue),
            inflight_batches=dispatch.inflight,
            store_segments=len(self._store),
            store_tokens=self._store.tokens,
            scoring_seconds=dispatch.seconds,
            scoring_latency=dispatch.latency.snapshot(),
            watches=len(self._watches.monitor),
            alerts=self._watches.alerts_total,
            **self._counters,
        )
