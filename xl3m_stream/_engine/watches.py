"""Standing questions: every scored segment is also scored against each watched question
(one shared pass per batch), the monitor decides, and crossings become :class:`Alert` values
for the facade to emit (or to explain first, off the scoring path). See docs/MONITORING.md."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import anyio
import msgspec

from ..errors import InputError
from ..events import Alert
from ..monitor import SIGNAL_MEASURES, Monitor, Threshold, Watch, WatchStats
from ..segment import Segment
from .questions import Questions
from .signals import Signals

log = logging.getLogger("xl3m_stream.engine")

MAX_EXPLAINING = 32
"""Alerts explained at once; beyond it an alert is emitted without an explanation."""

Rows = dict[int, list[dict[str, float]]]


class SavedWatches(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a state dir keeps of the standing questions (``watches.json``)."""

    next_id: int
    watches: list[Watch]  # watch id -> one score dict per segment


class Watches:
    def __init__(self, questions: Questions, signals: Signals, tokenizer: Any, *, embedder: str) -> None:
        self.monitor = Monitor(embedder)
        self._questions = questions
        self._signals = signals
        self._tokenizer = tokenizer
        self._ids: dict[int, tuple[int, ...]] = {}  # watch id -> question token ids
        self.on_change: Callable[[SavedWatches], None] | None = None  # the journal saves them
        self.alerts_total = 0
        self.explaining = 0
        self._explained = anyio.Event()

    def add(
        self,
        question: str,
        *,
        threshold: str | float | Threshold,
        measure: str,
        warmup: int | None,
        cooldown: int,
        min_score: float | None,
        min_overlap: float | Literal["auto"] | None,
        explain: bool,
    ) -> int:
        if measure == "dense" and not self._signals.dense:
            raise InputError("measure='dense' needs the dense signal: put 'dense' in EngineConfig.relevance")
        _, ids = self._questions.encode(question)
        watch = self.monitor.add(
            question,
            threshold=threshold,
            measure=measure,
            warmup=warmup,
            cooldown=cooldown,
            min_score=min_score,
            min_overlap=min_overlap,
            explain=explain,
        )
        self._ids[watch.id] = ids
        self._changed()
        return watch.id

    def remove(self, watch_id: int) -> None:
        self.monitor.remove(watch_id)
        del self._ids[watch_id]
        self._changed()

    def restore(self, saved: SavedWatches) -> None:
        """Watches saved by an earlier run, under their ids (statistics start empty)."""
        self.monitor.reserve(saved.next_id)
        for watch in saved.watches:
            try:
                if watch.measure == "dense" and not self._signals.dense:
                    raise InputError("measure='dense' needs the dense signal, which is off")
                _, ids = self._questions.encode(watch.question)
                self._ids[self.monitor.restore(watch).id] = ids
            except InputError as exc:  # e.g. a dense watch, the dense signal now off: the rest still run
                log.warning("saved watch %d (%r) not restored: %s", watch.id, watch.question, exc)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(SavedWatches(next_id=self.monitor.next_id, watches=list(self.monitor)))

    def stats(self) -> list[WatchStats]:
        return [self.monitor.stats(w.id) for w in self.monitor]

    def questions(self) -> dict[int, tuple[int, ...]]:
        """The watched questions now (a copy: ``watch()`` may run while a batch is scored)."""
        return dict(self._ids)

    async def add_signals(self, segments: list[Segment], texts: list[str] | None, rows: Rows) -> None:
        """The signals beside the certainty that dense and fused watches alert on. Called before
        the batch's terms are counted, as on arrival."""
        if texts is None:
            return
        for wid, watch_rows in rows.items():
            if wid in self.monitor and (watch := self.monitor.get(wid)).measure in SIGNAL_MEASURES:
                await self._signals.for_watch(watch.question, watch.measure == "fused", segments, texts, watch_rows)

    def check(
        self, segments: list[Segment], rows: Rows, decoded: list[str] | None = None
    ) -> list[tuple[Alert, Segment, bool]]:
        """Each watched question's scores to the monitor: the alerts, each with its segment and
        whether its watch wants it explained. ``decoded``: the segments' texts, when the
        batch already decoded them (the signals beside the certainty need them too)."""
        texts: dict[int, str] = dict(zip((s.seq for s in segments), decoded)) if decoded is not None else {}

        def text_of(seg: Segment) -> str:  # decoded once, whatever the number of watches
            if seg.seq not in texts:
                texts[seg.seq] = self._tokenizer.decode(list(seg.tokens))
            return texts[seg.seq]

        out = []
        for wid, watch_rows in rows.items():
            if wid not in self.monitor:
                continue  # unwatched while the batch was scored
            watch = self.monitor.get(wid)
            for seg, scores in zip(segments, watch_rows):
                decision = self.monitor.observe(
                    wid, seg.seq, scores, text_of(seg) if watch.min_overlap is not None else None
                )
                if not decision.alert:
                    continue
                self.alerts_total += 1
                alert = Alert(
                    time=time.time(),
                    question=watch.question,
                    question_index=wid,
                    seq=seg.seq,
                    start=seg.start,
                    end=seg.end,
                    score=decision.score,
                    threshold=decision.threshold if decision.threshold is not None else math.nan,
                    text=text_of(seg),
                    meta=seg.meta,
                    measure=watch.measure,
                    scores=scores,
                    overlap=decision.overlap,
                )
                out.append((alert, seg, watch.explain))
        return out

    # -- explanations: counted here, generated by answer.py, emitted by the facade ----------
    def begin_explaining(self) -> bool:
        """Room for one more alert to be explained (else it is emitted as it is)."""
        if self.explaining >= MAX_EXPLAINING:
            return False
        self.explaining += 1
        return True

    def end_explaining(self) -> None:
        self.explaining -= 1
        if not self.explaining:
            self._explained.set()
            self._explained = anyio.Event()

    async def explained(self) -> None:
        """Wait until every alert waiting for its explanation has been emitted."""
        while self.explaining:
            await self._explained.wait()
