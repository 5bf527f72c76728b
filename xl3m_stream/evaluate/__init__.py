"""The model-free half of the evaluation: seeded tasks, answer and selection metrics, baselines.

``make_sample`` builds a task instance (see ``TASKS``), ``score_answer`` scores a reader's
answer, ``evidence_recall`` / ``evidence_rank`` score a selection, and the ``select_*``
functions are the non-LM selection baselines of EVAL.md (truncate, sink, bm25, embed).
"""

from __future__ import annotations

from .baselines import (
    SELECTORS,
    Embedder,
    rank_bm25,
    rank_embed,
    reciprocal_rank_fusion,
    select_bm25,
    select_by_scores,
    select_embed,
    select_sink,
    select_truncate,
)
from .metrics import (
    contains_evidence,
    evidence_rank,
    evidence_recall,
    first_int_match,
    normalise,
    score_answer,
    string_match_all,
    substring_match,
)
from .tasks import TASKS, Sample, default_depths, make_sample, needle_grid

__all__ = [
    "SELECTORS",
    "TASKS",
    "Embedder",
    "Sample",
    "contains_evidence",
    "default_depths",
    "evidence_rank",
    "evidence_recall",
    "first_int_match",
    "make_sample",
    "needle_grid",
    "normalise",
    "rank_bm25",
    "rank_embed",
    "reciprocal_rank_fusion",
    "score_answer",
    "select_bm25",
    "select_by_scores",
    "select_embed",
    "select_sink",
    "select_truncate",
    "string_match_all",
    "substring_match",
]
