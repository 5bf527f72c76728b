"""Scoring answers and selections for the evaluation tasks (pure Python, no model).

Answer scores follow the papers the tasks come from: passkey checks the first integer of the
answer, the needle, multikey and logs tasks a normalised substring, multivalue and vartrack
RULER's ``string_match_all`` (share of expected strings found, case-insensitive).

Selection scores say whether the evidence made it into what the reader saw
(:func:`evidence_recall`) and how high the scorer ranked it (:func:`evidence_rank`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from .tasks import Sample

_INT = re.compile(r"\d+")
_END_PUNCT = string.punctuation + "“”‘’«»…"


def first_int_match(answer: str, expected: str) -> bool:
    """True when the first run of digits in ``answer`` is the integer ``expected``.

    ``"The pass key is 01234."`` matches ``"1234"``; ``"12,345"`` reads as 12 (passkey keys have
    no separators). No digits in the answer: False.
    """
    m = _INT.search(answer)
    return m is not None and int(m.group()) == int(expected)


def normalise(s: str) -> str:
    """Lower-case, collapse every run of whitespace to one space, strip punctuation at both ends."""
    return " ".join(s.lower().split()).strip(_END_PUNCT + " ")


def substring_match(answer: str, expected: str) -> bool:
    """True when ``normalise(expected)`` occurs in ``normalise(answer)`` (never for an empty expected)."""
    e = normalise(expected)
    return bool(e) and e in normalise(answer)


def string_match_all(answer: str, expected: Sequence[str]) -> float:
    """Share of ``expected`` strings found in ``answer``, case-insensitive (RULER's metric)."""
    if not expected:
        raise ValueError("string_match_all needs at least one expected string")
    a = answer.lower()
    return sum(1.0 for e in expected if e.lower() in a) / len(expected)


def _names_distractor(answer: str, distractors: Sequence[str]) -> bool:
    a = normalise(answer)
    return any(re.search(r"(?<!\w)" + re.escape(normalise(d)) + r"(?!\w)", a) for d in distractors)


def score_answer(sample: Sample, answer: str, *, strict: bool = False) -> float:
    """Score in [0, 1] of ``answer`` for ``sample``, by task.

    passkey: :func:`first_int_match`; needle, multikey, logs and the real-text tasks:
    :func:`substring_match`;
    multivalue, vartrack: :func:`string_match_all`. With ``strict=True`` an answer that also
    names one of ``sample.meta["distractors"]`` (as a whole word: another key's value,
    another chain's variable, another service) scores 0, so that listing every candidate
    does not pass.
    """
    task = sample.task
    if task == "passkey":
        score = float(first_int_match(answer, sample.answers[0]))
    elif task in ("needle", "multikey", "logs", "prose-lexical", "prose-paraphrase", "log-real"):
        score = float(any(substring_match(answer, e) for e in sample.answers))
    elif task in ("multivalue", "vartrack"):
        score = string_match_all(answer, sample.answers)
    else:
        raise ValueError(f"no scoring rule for task {task!r}")
    if strict and score > 0 and _names_distractor(answer, sample.meta.get("distractors", ())):
        return 0.0
    return score


def _ws(s: str) -> str:
    return " ".join(s.split())


def evidence_recall(sample: Sample, selected_text: str) -> float:
    """Share of ``sample.evidence`` strings that occur whole in ``selected_text``.

    Both sides are whitespace-normalised (runs of whitespace become one space), otherwise
    compared exactly. A needle cut in two by a segment boundary counts only if both halves
    were selected and end up adjacent in ``selected_text``.
    """
    if not sample.evidence:
        return 0.0
    text = _ws(selected_text)
    return sum(1.0 for e in sample.evidence if _ws(e) in text) / len(sample.evidence)


def contains_evidence(sample: Sample, text: str, which: int = 0) -> bool:
    """True when ``text`` holds evidence string ``which`` of ``sample``, or its distinctive part.

    The rule: the whole evidence string (whitespace-normalised) occurs in ``text``, or its key
    ``sample.meta["evidence_keys"][which]`` does: the pass key, the secret code, the magic
    number, the whole ``VAR`` line, the log incident phrase. So a needle that straddles two
    segments counts for the segment holding its key (the answer); if the cut falls inside the
    key itself, neither segment counts.
    """
    t = _ws(text)
    if _ws(sample.evidence[which]) in t:
        return True
    keys = sample.meta.get("evidence_keys") or ()
    return which < len(keys) and _ws(keys[which]) in t


def evidence_rank(sample: Sample, ranked_texts: Sequence[str], which: int = 0) -> int | None:
    """1-based rank of the first of ``ranked_texts`` (best first) that holds evidence ``which``.

    ``which=0`` is the main evidence (the needle at the sample's depth). Containment follows
    :func:`contains_evidence`. None when no text holds it.
    """
    for rank, text in enumerate(ranked_texts, start=1):
        if contains_evidence(sample, text, which):
            return rank
    return None
