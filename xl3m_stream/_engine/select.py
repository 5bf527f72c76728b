"""Selection: the stored candidates (and the unsegmented tail) re-scored against the asked
question as needed, ranked (rank fusion of the signals when they are on), the best that fit
the budget chosen, and the key context assembled in stream order with the recent window."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from ..config import EngineConfig
from ..errors import InputError
from ..inference import KeyContext, assemble
from ..store import SegmentStore, StoreEntry, rank_key, select_best
from .answer import Answerer
from .dispatch import Dispatcher
from .intake import Intake
from .questions import Questions
from .signals import Signals


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    context: KeyContext
    prompt: list[Any]
    """The reader's prompt: token ids (a local reader), chat messages (a remote one)."""
    rescored: int
    rescore_s: float


class Selector:
    def __init__(
        self,
        config: EngineConfig,
        tokenizer: Any,
        intake: Intake,
        store: SegmentStore,
        questions: Questions,
        dispatch: Dispatcher,
        signals: Signals,
        answerer: Answerer,
    ) -> None:
        self._config = config
        self._tokenizer = tokenizer
        self._intake = intake
        self._store = store
        self._questions = questions
        self._dispatch = dispatch
        self._signals = signals
        self._answerer = answerer

    def question(self, question: str | None) -> tuple[str, tuple[int, ...]]:
        """The asked question, or the rolling window (the stream's last tokens) when None."""
        if question is not None:
            return self._questions.encode(question)
        window = self._intake.window(self._config.question_tokens)
        if not window:
            raise InputError("nothing has been fed yet, and no question was given")
        return self._tokenizer.decode(window), tuple(window)

    async def select(self, question: str | None, policy: str, max_new_tokens: int | None) -> Selection:
        """Call once every segment fed before the ask is scored (the facade drains first)."""
        cfg = self._config
        intake = self._intake
        store = self._store
        reader = self._answerer.reader
        tokenizer = self._tokenizer
        q_text, q_ids = self.question(question)
        budget = self._answerer.budget_for(q_text, max_new_tokens=max_new_tokens)

        # The ask sees the stream as it was when it was called: segments cut later (while this
        # ask awaits re-scoring) are left out, and so are tokens fed later.
        horizon = intake.segmenter.next_seq
        position = intake.position
        tail = intake.tail_segment()
        local_ids = intake.last(min(cfg.local_window_tokens, budget)) if cfg.local_window_tokens else []
        local_start = position - len(local_ids)

        # Re-score candidates (and the unsegmented tail) against this question when needed.
        # Scores are kept per ask, so concurrent asks with other questions cannot mix them up;
        # they are also written back to the store for the next ask of the same question.
        key = self._questions.key(q_ids)
        rescore_started = time.perf_counter()
        mine: dict[int, dict[str, float]] = {}
        tail_scores: dict[str, float] | None = None
        while True:
            stale = [
                e.segment
                for e in store
                if e.segment.seq < horizon
                and e.segment.seq not in mine
                and (policy == "always" or (policy == "auto" and e.question_id != key))
            ]
            need_tail = tail is not None and tail_scores is None
            if not stale and not need_tail:
                break
            to_score = stale + ([tail] if need_tail and tail is not None else [])
            results: list[dict[str, float]] = []
            for i in range(0, len(to_score), cfg.batch_size):
                results += await self._dispatch.score(to_score[i : i + cfg.batch_size], q_ids)
            if need_tail:
                tail_scores = results.pop()
            mine.update({seg.seq: r for seg, r in zip(stale, results)})
            if policy != "always":
                break  # entries that became stale meanwhile keep their own question's scores
        measure = cfg.measure
        fused = self._signals.fused
        present = {seq: r for seq, r in mine.items() if seq in store}
        if present:
            # fused: the store keeps ranking by arrival scores; the details now hold this question's
            ranked = {seq: store.get(seq).score if fused else r[measure] for seq, r in present.items()}
            store.rescore(ranked, question_id=key, details=present)
        rescore_s = time.perf_counter() - rescore_started

        candidates = []
        for e in store:
            seq = e.segment.seq
            if seq >= horizon:
                continue
            if seq in mine:
                e = msgspec.structs.replace(e, score=mine[seq][measure], question_id=key, scores=mine[seq])
            candidates.append(e)
        if tail is not None and tail_scores is not None:
            candidates.append(StoreEntry(segment=tail, score=tail_scores[measure], question_id=key, scores=tail_scores))
        if fused and candidates:
            candidates = await self._signals.fuse(candidates, q_text)
        candidates.sort(key=rank_key, reverse=True)
        local_text = tokenizer.decode(local_ids) if local_ids else ""
        chosen = select_best(
            candidates,
            max(0, budget - reader.count(local_text)),
            exclude_from=local_start if local_ids else None,
            cost=lambda e: reader.count(tokenizer.decode(list(e.segment.tokens))),
        )
        room = self._answerer.budget_for(q_text, max_new_tokens=max_new_tokens, whole_window=True)
        while True:
            ctx = assemble(
                chosen,
                local_ids,
                local_start,
                tokenizer=tokenizer,
                question=q_text,
                budget=budget,
                stream_tokens=position,
                count=reader.count,
            )
            if ctx.tokens <= room or not chosen:
                break
            worst = min(chosen, key=rank_key)  # gap markers pushed it past the reader's window
            chosen = [e for e in chosen if e is not worst]
        return Selection(context=ctx, prompt=self._answerer.prompt(ctx), rescored=len(mine), rescore_s=rescore_s)
