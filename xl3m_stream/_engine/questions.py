"""Questions as the scorer sees them: checked and encoded, and a small key for each recent
one, so scores taken against the same question are told apart from others'."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..config import EngineConfig
from ..errors import InputError

QUESTION_KEYS_KEPT = 4096
"""How many distinct questions keep their key (see :meth:`Questions.key`)."""


class Questions:
    """``scorer``: the first replica's (for ``encode_question``); ``window``: the scoring model's."""

    def __init__(self, config: EngineConfig, scorer: Any, window: int) -> None:
        self._scorer = scorer
        self._window = window
        self._limit = config.max_question_tokens
        self._segment_tokens = config.segment_tokens
        # question ids -> small int key; bounded (the rolling window makes a new question per batch)
        self.keys: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._next = 1

    def encode(self, question: str) -> tuple[str, tuple[int, ...]]:
        """``question`` and its scoring ids; InputError when it is empty or does not fit."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("question must be a non-empty string")
        ids = tuple(self._scorer.encode_question(question))
        if len(ids) > self._limit:
            raise InputError(f"question is {len(ids)} tokens long; the limit is max_question_tokens={self._limit}")
        if self._segment_tokens + len(ids) + 8 > self._window:
            raise InputError(
                f"question of {len(ids)} tokens plus a {self._segment_tokens}-token segment exceeds "
                f"the scoring model's window of {self._window} tokens"
            )
        return question, ids

    def key(self, ids: tuple[int, ...]) -> int:
        """The question's key. Only the most recent questions keep theirs; a stored score whose
        key was forgotten just counts as taken against another question (re-scored at the next ask)."""
        key = self.keys.get(ids)
        if key is None:
            key = self._next
            self._next += 1
            self.keys[ids] = key
            if len(self.keys) > QUESTION_KEYS_KEPT:
                self.keys.popitem(last=False)
        else:
            self.keys.move_to_end(ids)
        return key

    def restore(self, questions: Sequence[Sequence[int]]) -> None:
        """Keys 1..n for a snapshot's questions, in its order."""
        self.keys = OrderedDict((tuple(q), i + 1) for i, q in enumerate(questions))
        self._next = len(self.keys) + 1
