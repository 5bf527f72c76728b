"""Standing questions ("watch"): running score statistics, thresholds, warm-up and cool-down.

A :class:`Monitor` holds the questions a user registered with ``Engine.watch``. For every
arriving segment the engine scores it against each watched question and hands the scores
to :meth:`Monitor.observe`, which decides whether the segment *alerts*:

1. the watch's ``measure`` picks one relevance score (higher = more relevant);
2. during the first ``warmup`` segments the watch only learns its score distribution;
3. after that the segment alerts when its score is above the watch's threshold, computed
   from the scores the watch saw before it (see :class:`Threshold`), at least ``min_score``
   when one is set, and, with the lexical gate on (``min_overlap``), when the segment holds
   at least that share of the question's information in words (see :class:`Lexicon`);
4. a crossing within ``cooldown`` segments of an earlier crossing of the same watch is
   suppressed, so one incident spread over adjacent segments alerts once;
5. the score joins the watch's running window (alerting or not).

Thresholds are relative by default because raw relevance scales depend on the model, the
question and the text: ``"z4"`` means four standard deviations above the mean of the recent
scores, ``"p99.5"`` above their 99.5th percentile, a plain number an absolute score.

Plain synchronous code: no event loop, no model, no tokens. The engine calls it from its
event-loop thread; it is not thread-safe.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Literal

import msgspec

from .config import MEASURES
from .errors import InputError
from .relevance import ArrivalFusion
from .running import DEFAULT_WINDOW, RunningScores

__all__ = [
    "AUTO",
    "DEFAULT_COOLDOWN",
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_THRESHOLD",
    "DEFAULT_WATCH_MEASURE",
    "DEFAULT_WINDOW",
    "FUSED_THRESHOLD",
    "FUSED_THRESHOLDS",
    "SIGNAL_MEASURES",
    "UNGATED_THRESHOLD",
    "WATCH_MEASURES",
    "Decision",
    "Lexicon",
    "Monitor",
    "RunningScores",
    "Threshold",
    "Watch",
    "WatchStats",
    "auto_threshold",
    "check_watch_options",
]

WATCH_MEASURES = (*MEASURES, "dense", "fused")
"""What a watch can alert on: a certainty measure, ``dense`` (the question's embedding cosine),
or ``fused`` (the certainty, BM25 and dense signals, each a z-score against its own recent
values for this watch, the two largest summed: :class:`~xl3m_stream.relevance.ArrivalFusion`)."""
SIGNAL_MEASURES = ("dense", "fused")
"""The watch measures that are not certainty measures: the engine computes them for the watch,
beside its own measure, and they have no lexical gate by default."""
FUSED_THRESHOLDS = {"minilm": "z5.625", "mpnet": "z5.625"}
"""The threshold measured for ``fused`` watches, by the dense signal's embedder
(``EngineConfig.embedder``); ``threshold="auto"`` picks it. Chosen on the monitoring benchmark's
tuning dumps (docs/MONITORING.md, replayed with the two-largest rule): mpnet's precision 1.0 and
recall 0.917 / 1.0 / 0.917 on seeds 11, 12 and 7002 from z5.5 to z5.75; MiniLM's precision 1.0 /
0.933 and recall 0.917 / 1.0 on seeds 11 and 12 over the same range. Both take its middle."""
FUSED_THRESHOLD = FUSED_THRESHOLDS["minilm"]
"""The ``fused`` threshold of the default embedder (MiniLM), and of an embedder directory,
for which none was measured."""
UNGATED_THRESHOLD = "z4"
"""``threshold="auto"`` for a certainty measure without the lexical gate (``min_overlap=None``):
the best model-only trade-off measured (docs/MONITORING.md)."""
FUSED_SIGNALS = {"certainty": "nll", "lexical": "bm25", "dense": "dense"}
"""The signals a ``fused`` watch combines, and the score each is read from (those present)."""
DEFAULT_WATCH_MEASURE = "nll"
"""Measure a watch alerts on unless told otherwise (chosen by measurement: docs/MONITORING.md)."""
DEFAULT_THRESHOLD = "z2"
"""``threshold="auto"`` for a certainty measure with its lexical gate, and for ``dense`` (for
which no threshold was tuned: its scores are one cosine, pass a stricter one where it is noisy)."""
DEFAULT_MIN_OVERLAP = 0.2
"""Lexical gate of a watch on a certainty measure unless told otherwise (None turns it off:
the model's relevance alone). ``dense`` and ``fused`` watches have no gate unless given one:
their signals are there to find incidents that do not share the question's words."""
AUTO = "auto"
"""``min_overlap="auto"``: :data:`DEFAULT_MIN_OVERLAP` for a certainty measure, no gate for
``dense`` and ``fused``. ``threshold="auto"``: the threshold measured for the watch's measure
and gate (:func:`auto_threshold`)."""
DEFAULT_COOLDOWN = 1
"""Crossings within this many segments of the previous crossing do not alert again."""
MIN_WARMUP = 32
"""Least warm-up of a relative threshold: a z-score or percentile of fewer scores is noise."""

_SPEC = re.compile(r"^\s*([pPzZ])\s*(\d+(?:\.\d*)?|\.\d+)\s*$")
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    """The distinct lower-case words (runs of letters and digits) of ``text``."""
    return set(_WORD.findall(text.lower()))


class Threshold(msgspec.Struct, frozen=True):
    """When a score is high enough to alert.

    * ``percentile`` (``"p99"``, ``"p99.9"``): above the ``value``-th percentile of the
      recent scores (``0 < value < 100``);
    * ``zscore`` (``"z3"``, ``"z2.5"``): above ``mean + value * std`` of the recent scores;
    * ``absolute`` (a number): at least ``value``.
    """

    kind: Literal["percentile", "zscore", "absolute"]
    value: float

    @classmethod
    def parse(cls, spec: str | float | Threshold) -> Threshold:
        """``"p99"``, ``"z3"``, a number, or a number as text. Raises InputError otherwise."""
        if isinstance(spec, Threshold):
            return spec
        if isinstance(spec, bool):
            raise InputError(f"threshold must be 'pNN', 'zN' or a number, got {spec!r}")
        if isinstance(spec, (int, float)):
            return cls._absolute(float(spec), spec)
        if not isinstance(spec, str):
            raise InputError(f"threshold must be 'pNN', 'zN' or a number, got {type(spec).__name__}")
        m = _SPEC.match(spec)
        if m is None:
            try:
                number = float(spec)
            except ValueError:
                raise InputError(
                    f"threshold {spec!r} is not 'pNN' (a percentile, e.g. p99), 'zN' (a z-score, e.g. z3) or a number"
                ) from None
            return cls._absolute(number, spec)
        value = float(m.group(2))
        if m.group(1).lower() == "p":
            if not 0.0 < value < 100.0:
                raise InputError(f"threshold {spec!r}: a percentile must be between 0 and 100 (exclusive)")
            return cls("percentile", value)
        if not math.isfinite(value):
            raise InputError(f"threshold {spec!r}: a z-score must be finite")
        return cls("zscore", value)

    @classmethod
    def _absolute(cls, value: float, spec: object) -> Threshold:
        if math.isnan(value):
            raise InputError(f"threshold {spec!r}: NaN is not a threshold")
        return cls("absolute", value)

    @property
    def relative(self) -> bool:
        """Whether the threshold depends on the scores seen (percentile or z-score)."""
        return self.kind != "absolute"

    def default_warmup(self) -> int:
        """Segments to observe before alerting: enough for the threshold to mean something."""
        if self.kind == "absolute":
            return 0
        if self.kind == "percentile":
            # the p-th percentile of n scores lies below their maximum once n >= 100 / (100 - p)
            return max(MIN_WARMUP, math.ceil(round(100.0 / (100.0 - self.value), 6)))
        return MIN_WARMUP

    def __str__(self) -> str:
        if self.kind == "percentile":
            return f"p{self.value:g}"
        if self.kind == "zscore":
            return f"z{self.value:g}"
        return f"{self.value:g}"


class Lexicon:
    """The lexical gate of one watch: how much of its question's information a segment holds in words.

    ``overlap(text)`` first counts the segment into running document frequencies of the
    question's words (over the segments this watch has seen), then returns the idf-weighted
    share of the question's words present in it: ``sum(idf(w) for w in present) / sum(idf(w)
    for w in question)`` with ``idf(w) = log((n + 1) / (df(w) + 0.5))``. Words every segment
    has weigh little; words no segment has (often the question's own phrasing, "which",
    "reported") weigh most and are only in the denominator. Only the question's words are
    counted, so memory stays bounded over an endless stream.
    """

    def __init__(self, question: str) -> None:
        self.terms: tuple[str, ...] = tuple(sorted(words(question)))
        self.df = dict.fromkeys(self.terms, 0)
        self.segments = 0

    def overlap(self, text: str) -> float:
        present = [t for t in self.terms if t in words(text)]
        self.segments += 1
        for t in present:
            self.df[t] += 1
        idf = {t: math.log((self.segments + 1) / (self.df[t] + 0.5)) for t in self.terms}
        total = sum(idf.values())
        return sum(idf[t] for t in present) / total if total > 0 else 0.0


class Watch(msgspec.Struct, frozen=True, kw_only=True):
    """One standing question and how it alerts."""

    id: int
    question: str
    threshold: Threshold
    measure: str = DEFAULT_WATCH_MEASURE
    warmup: int = 0
    """Segments observed before the first alert can fire."""
    cooldown: int = DEFAULT_COOLDOWN
    min_score: float | None = None
    """An alert also needs at least this score (a floor under a relative threshold)."""
    min_overlap: float | None = DEFAULT_MIN_OVERLAP
    """Lexical gate: an alert also needs this share of the question's information in words
    (:class:`Lexicon`); None turns the gate off."""
    explain: bool = False
    """Ask the reader for a short answer to the question from the alerting segment."""
    window: int = DEFAULT_WINDOW


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Monitor.observe` made of one score."""

    watch_id: int
    seq: int
    score: float
    threshold: float | None
    """The score an alert needed (None during warm-up or for a score that was not finite)."""
    alert: bool
    reason: Literal["alert", "warmup", "below", "min_score", "overlap", "cooldown", "invalid"]
    overlap: float | None = None
    """The segment's lexical overlap with the question (None when the gate is off)."""


class WatchStats(msgspec.Struct, frozen=True, kw_only=True):
    """A watch's running state, for dashboards and for choosing thresholds."""

    id: int
    question: str
    threshold: str
    measure: str
    seen: int
    alerts: int
    suppressed: int
    """Crossings that did not alert because of the cool-down."""
    warming_up: bool
    current_threshold: float | None
    mean: float | None
    std: float | None
    p50: float | None
    p99: float | None
    max: float | None


def check_watch_options(
    question: str,
    *,
    threshold: str | float | Threshold = AUTO,
    measure: str = DEFAULT_WATCH_MEASURE,
    warmup: int | None = None,
    cooldown: int = DEFAULT_COOLDOWN,
    min_score: float | None = None,
    min_overlap: float | Literal["auto"] | None = AUTO,
    explain: bool = False,
    window: int = DEFAULT_WINDOW,
    embedder: str = "minilm",
) -> Watch:
    """Check a standing question and its options as :meth:`Monitor.add` does, registering
    nothing (the CLI checks them before it loads a model); returns the :class:`Watch` they
    make, with ``id`` 0 and the defaults resolved. ``embedder`` (``EngineConfig.embedder``)
    picks a ``fused`` watch's ``"auto"`` threshold. Raises InputError on a bad value, with the
    message :meth:`Monitor.add` gives (it calls this).
    """
    if not isinstance(question, str) or not question.strip():
        raise InputError("a watched question must be a non-empty string")
    if measure not in WATCH_MEASURES:
        raise InputError(f"measure must be one of {', '.join(WATCH_MEASURES)}, got {measure!r}")
    if isinstance(min_overlap, str) and min_overlap == AUTO:
        min_overlap = None if measure in SIGNAL_MEASURES else DEFAULT_MIN_OVERLAP
    if isinstance(threshold, str) and threshold.strip().lower() == AUTO:
        threshold = auto_threshold(measure, gated=min_overlap is not None, embedder=embedder)
    spec = Threshold.parse(threshold)
    if warmup is None:
        warmup = spec.default_warmup()
    for name, value, least in (("warmup", warmup, 0), ("cooldown", cooldown, 0), ("window", window, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
    if min_score is not None and not (isinstance(min_score, (int, float)) and math.isfinite(min_score)):
        raise InputError(f"min_score must be a finite number or None, got {min_score!r}")
    if min_overlap == AUTO:
        min_overlap = None if measure in SIGNAL_MEASURES else DEFAULT_MIN_OVERLAP
    if min_overlap is not None:
        if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
            raise InputError(f"min_overlap must be between 0 and 1 or None, got {min_overlap!r}")
        if not Lexicon(question).terms:
            raise InputError(f"question {question!r} has no words for the lexical gate (use min_overlap=None)")
    return Watch(
        id=0,
        question=question,
        threshold=spec,
        measure=measure,
        warmup=warmup,
        cooldown=cooldown,
        min_score=None if min_score is None else float(min_score),
        min_overlap=None if min_overlap is None else float(min_overlap),
        explain=bool(explain),
        window=window,
    )


def auto_threshold(measure: str, *, gated: bool, embedder: str = "minilm") -> str:
    """The threshold measured for a watch on ``measure`` (with the lexical gate or not) whose
    engine embeds with ``embedder``: :data:`FUSED_THRESHOLDS` for ``fused`` (MiniLM's for an
    embedder directory), :data:`DEFAULT_THRESHOLD` for a gated certainty measure and ``dense``,
    :data:`UNGATED_THRESHOLD` for a certainty measure without its gate."""
    if measure == "fused":
        return FUSED_THRESHOLDS.get(embedder, FUSED_THRESHOLD)
    if measure in SIGNAL_MEASURES or gated:
        return DEFAULT_THRESHOLD
    return UNGATED_THRESHOLD


class _State:
    __slots__ = ("alerts", "fusion", "last_crossing", "lexicon", "scores", "suppressed")

    def __init__(self, window: int, lexicon: Lexicon | None) -> None:
        self.scores = RunningScores(window)
        self.lexicon = lexicon
        self.fusion: ArrivalFusion | None = None
        self.alerts = 0
        self.suppressed = 0
        self.last_crossing: int | None = None


class Monitor:
    """The watched questions of one engine and their running statistics. ``embedder`` (the
    engine's ``EngineConfig.embedder``) picks a ``fused`` watch's ``"auto"`` threshold."""

    def __init__(self, embedder: str = "minilm") -> None:
        self._embedder = embedder
        self._watches: dict[int, Watch] = {}
        self._states: dict[int, _State] = {}
        self._next_id = 1

    def add(
        self,
        question: str,
        *,
        threshold: str | float | Threshold = AUTO,
        measure: str = DEFAULT_WATCH_MEASURE,
        warmup: int | None = None,
        cooldown: int = DEFAULT_COOLDOWN,
        min_score: float | None = None,
        min_overlap: float | Literal["auto"] | None = AUTO,
        explain: bool = False,
        window: int = DEFAULT_WINDOW,
    ) -> Watch:
        """Register a standing question; returns its :class:`Watch` (``.id`` names it).

        ``warmup=None`` picks :meth:`Threshold.default_warmup`; ``min_overlap="auto"`` the gate
        of the measure and ``threshold="auto"`` its measured threshold (:data:`AUTO`). Raises
        InputError on a bad value (see :func:`check_watch_options`, which checks them).
        """
        checked = check_watch_options(
            question,
            threshold=threshold,
            measure=measure,
            warmup=warmup,
            cooldown=cooldown,
            min_score=min_score,
            min_overlap=min_overlap,
            explain=explain,
            window=window,
            embedder=self._embedder,
        )
        return self._register(msgspec.structs.replace(checked, id=self._next_id))

    @property
    def next_id(self) -> int:
        """The id the next watch gets (ids are never reused, across restarts too)."""
        return self._next_id

    def reserve(self, next_id: int) -> None:
        """Never hand out an id below ``next_id`` (a restart keeps the ids of removed watches used)."""
        self._next_id = max(self._next_id, int(next_id))

    def restore(self, watch: Watch) -> Watch:
        """Register a saved watch under its own id (its values checked again, its running
        statistics start empty). Raises InputError on a bad value or an id in use."""
        if watch.id in self._watches or watch.id < 0:
            raise InputError(f"watch id {watch.id!r} is in use or invalid")
        options = {k: v for k, v in msgspec.structs.asdict(watch).items() if k not in ("id", "question")}
        return self._register(msgspec.structs.replace(check_watch_options(watch.question, **options), id=watch.id))

    def _register(self, watch: Watch) -> Watch:
        """Hold ``watch`` (checked) under its id; ids handed out later are above it."""
        self._watches[watch.id] = watch
        self._states[watch.id] = _State(
            watch.window, Lexicon(watch.question) if watch.min_overlap is not None else None
        )
        self._next_id = max(self._next_id, watch.id + 1)
        return watch

    def remove(self, watch_id: int) -> Watch:
        """Stop watching; returns the removed watch. Raises InputError for an unknown id."""
        watch = self.get(watch_id)
        del self._watches[watch_id]
        del self._states[watch_id]
        return watch

    def get(self, watch_id: int) -> Watch:
        watch = self._watches.get(watch_id)
        if watch is None:
            raise InputError(f"no watch with id {watch_id!r}")
        return watch

    def __iter__(self) -> Iterator[Watch]:
        return iter(list(self._watches.values()))

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, watch_id: object) -> bool:
        return watch_id in self._watches

    @property
    def alerts(self) -> int:
        """Alerts raised by the current watches, all together."""
        return sum(s.alerts for s in self._states.values())

    def threshold_value(self, watch_id: int) -> float | None:
        """The score the next segment needs to alert (None while warming up)."""
        watch = self.get(watch_id)
        return self._threshold(watch, self._states[watch_id])

    @staticmethod
    def _threshold(watch: Watch, state: _State) -> float | None:
        spec = watch.threshold
        if state.scores.count < watch.warmup:
            return None
        if spec.kind == "absolute":
            return spec.value
        if len(state.scores) == 0:
            return None
        if spec.kind == "percentile":
            return state.scores.quantile(spec.value / 100.0)
        return state.scores.mean + spec.value * state.scores.std

    def observe(
        self, watch_id: int, seq: int, scores: Mapping[str, float] | float, text: str | None = None
    ) -> Decision:
        """Take the scores of segment ``seq`` for a watch; decide whether it alerts.

        ``scores`` is the scorer's dict of measures (or the watch's score alone); ``text`` is
        the segment's text, needed by the lexical gate. The threshold is computed from the
        scores seen before this one; then this one joins them. Call it in stream order.
        """
        watch = self.get(watch_id)
        state = self._states[watch_id]
        if isinstance(scores, (int, float)):
            score = float(scores)
        elif watch.measure == "fused":
            score = self._fused(watch, state, scores)
        else:
            score = float(scores[watch.measure])
        overlap = None
        if state.lexicon is not None:
            if text is None:
                raise InputError("this watch has a lexical gate (min_overlap): observe() needs the segment's text")
            overlap = state.lexicon.overlap(text)
        if not math.isfinite(score):
            return Decision(
                watch_id=watch_id, seq=seq, score=score, threshold=None, alert=False, reason="invalid", overlap=overlap
            )
        limit = self._threshold(watch, state)
        if limit is None:
            reason = "warmup"
        else:
            crossed = score >= limit if watch.threshold.kind == "absolute" else score > limit
            if not crossed:
                reason = "below"
            elif watch.min_score is not None and score < watch.min_score:
                reason = "min_score"
            elif watch.min_overlap is not None and overlap is not None and overlap < watch.min_overlap:
                reason = "overlap"
            elif state.last_crossing is not None and abs(seq - state.last_crossing) <= watch.cooldown:
                reason = "cooldown"
                state.last_crossing = seq if seq > state.last_crossing else state.last_crossing
                state.suppressed += 1
            else:
                reason = "alert"
                state.last_crossing = seq
                state.alerts += 1
        state.scores.add(score)
        return Decision(
            watch_id=watch_id,
            seq=seq,
            score=score,
            threshold=limit,
            alert=reason == "alert",
            reason=reason,
            overlap=overlap,
        )

    @staticmethod
    def _fused(watch: Watch, state: _State, scores: Mapping[str, float]) -> float:
        """A ``fused`` watch's score: its two strongest signals' z-scores summed (NaN on a non-finite one)."""
        values = {name: float(scores[key]) for name, key in FUSED_SIGNALS.items() if key in scores}
        if "certainty" not in values:
            raise InputError(f"a fused watch needs the {FUSED_SIGNALS['certainty']!r} score")
        if not all(math.isfinite(v) for v in values.values()):
            return math.nan
        if state.fusion is None:  # the signals this engine computes: fixed by the first segment
            state.fusion = ArrivalFusion(list(values), window=watch.window, combine="top2")
        return state.fusion.score({name: values.get(name, 0.0) for name in state.fusion.signals})

    def stats(self, watch_id: int) -> WatchStats:
        watch = self.get(watch_id)
        state = self._states[watch_id]
        s = state.scores
        have = len(s) > 0
        return WatchStats(
            id=watch.id,
            question=watch.question,
            threshold=str(watch.threshold),
            measure=watch.measure,
            seen=s.count,
            alerts=state.alerts,
            suppressed=state.suppressed,
            warming_up=s.count < watch.warmup,
            current_threshold=self._threshold(watch, state),
            mean=s.mean if have else None,
            std=s.std if have else None,
            p50=s.quantile(0.5) if have else None,
            p99=s.quantile(0.99) if have else None,
            max=s.quantile(1.0) if have else None,
        )
