"""Seeded evaluation tasks (xl3m_stream.evaluate.tasks) and their metrics."""

from __future__ import annotations

import re
from datetime import datetime

import msgspec
import pytest

from xl3m_stream.evaluate import haystack as hs
from xl3m_stream.evaluate.metrics import (
    contains_evidence,
    evidence_rank,
    evidence_recall,
    first_int_match,
    normalise,
    score_answer,
    string_match_all,
    substring_match,
)
from xl3m_stream.evaluate.tasks import (
    GENERATED_TASKS,
    PASSKEY_HEADER,
    PASSKEY_QUESTION,
    Sample,
    make_sample,
    needle_grid,
)

_WORD = re.compile(r"\w+|[^\w\s]")


def words(s: str) -> int:
    """A cheap tokenizer stand-in: words and punctuation marks."""
    return len(_WORD.findall(s))


_CACHE: dict[tuple[str, int, int, float | None], Sample] = {}


def sample(task: str, length: int = 4000, seed: int = 0, depth: float | None = 0.5) -> Sample:
    key = (task, length, seed, depth)
    if key not in _CACHE:
        _CACHE[key] = make_sample(task, length=length, seed=seed, depth=depth, count_tokens=words)
    return _CACHE[key]


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", GENERATED_TASKS)
def test_same_seed_same_sample_other_seed_other_sample(task: str) -> None:
    a = make_sample(task, length=3000, seed=7, depth=0.4, count_tokens=words)
    b = make_sample(task, length=3000, seed=7, depth=0.4, count_tokens=words)
    c = make_sample(task, length=3000, seed=8, depth=0.4, count_tokens=words)
    assert a == b
    assert a.context != c.context
    assert a.answers != c.answers or a.question != c.question
    # a JSON round trip keeps the sample whole
    assert msgspec.json.decode(msgspec.json.encode(a), type=Sample) == a


def test_depth_none_is_drawn_from_the_seed() -> None:
    a = make_sample("needle", length=2000, seed=3, count_tokens=words)
    b = make_sample("needle", length=2000, seed=3, count_tokens=words)
    assert a.depth is not None and 0.0 <= a.depth <= 1.0
    assert a == b


@pytest.mark.parametrize("task", GENERATED_TASKS)
@pytest.mark.parametrize("length", [1500, 6000, 30000])
def test_length_within_one_percent(task: str, length: int) -> None:
    s = sample(task, length=length, seed=1)
    n = words(s.context)
    assert n == s.meta["tokens"]
    assert abs(n - length) <= 0.01 * length + 5, (n, length)
    assert 1 <= s.meta["token_counts"] <= 3


def test_length_with_a_bpe_tokenizer() -> None:
    from xl3m_stream.testing import build_tiny_tokenizer

    tok = build_tiny_tokenizer()

    def count(s: str) -> int:
        return len(tok.encode(s).ids)

    for task in GENERATED_TASKS:
        s = make_sample(task, length=5000, seed=2, depth=0.3, count_tokens=count)
        n = count(s.context)
        assert n == s.meta["tokens"]
        assert abs(n - 5000) <= 50, (task, n)


@pytest.mark.parametrize("task", GENERATED_TASKS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_evidence_sits_in_the_context_at_the_depth(task: str, depth: float) -> None:
    s = sample(task, depth=depth)
    for e in s.evidence:
        assert e and e in s.context
    at = s.context.find(s.evidence[0]) / len(s.context)
    assert at == pytest.approx(s.meta["char_depth"])
    assert abs(at - depth) < 0.03, (at, depth)
    # needles sit on sentence / line boundaries
    start = s.context.find(s.evidence[0])
    assert start == 0 or s.context[start - 1] in " \n"


@pytest.mark.parametrize("task", [t for t in GENERATED_TASKS if t != "logs"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_answers_occur_only_in_the_evidence(task: str, seed: int) -> None:
    s = sample(task, length=20000, seed=seed)
    ev = "\n".join(s.evidence)
    for a in s.answers:
        assert a in ev
        assert s.context.count(a) == ev.count(a), a  # not guessable from the haystack
    assert s.context.count(s.evidence[0]) == 1


def test_passkey_format() -> None:
    s = sample("passkey", depth=0.5)
    k = s.answers[0]
    assert re.fullmatch(r"[1-9]\d{4}", k)
    assert s.question == PASSKEY_QUESTION == "What is the pass key? The pass key is"
    assert s.evidence == [f"The pass key is {k}. Remember it. {k} is the pass key."]
    assert s.context.startswith(PASSKEY_HEADER + "\nThe grass is green. The sky is blue. The sun is yellow.")
    assert f"\n{s.evidence[0]}\n" in s.context
    filler = s.context.replace(s.evidence[0], "")[len(PASSKEY_HEADER) :]
    assert set(re.split(r"(?<=\.)\s+", filler.strip())) <= {
        "The grass is green.",
        "The sky is blue.",
        "The sun is yellow.",
        "Here we go.",
        "There and back again.",
    }
    first = make_sample("passkey", length=500, seed=0, depth=0.0, count_tokens=words)
    assert first.context.startswith(PASSKEY_HEADER + "\n" + first.evidence[0] + "\nThe grass is green.")
    last = make_sample("passkey", length=500, seed=0, depth=1.0, count_tokens=words)
    assert last.context.endswith("again.\n" + last.evidence[0]) or last.context.endswith(".\n" + last.evidence[0])


def test_needle_is_a_random_code_in_varied_prose() -> None:
    s = sample("needle", length=20000)
    code = s.answers[0]
    assert re.fullmatch(r"[A-Z0-9]{6}", code)
    assert s.evidence[0] == f"The secret code of the {s.meta['noun']} archive is {code}."
    assert s.question == f"What is the secret code of the {s.meta['noun']} archive?"
    sentences = re.split(r"(?<=[.!?])\s+", s.context)
    assert len(set(sentences)) > 0.9 * len(sentences)  # not trivially repetitive
    prose = s.context.replace(s.evidence[0], "")
    assert not re.search(r"\d", prose)
    assert "secret" not in prose and "archive" not in prose


def test_needle_uses_the_given_haystack_files(tmp_path) -> None:
    text = "Alpha beta gamma delta. Epsilon zeta eta theta!\n\nIota kappa lambda mu? Nu xi omicron pi."
    f = tmp_path / "hay.txt"
    f.write_text(text)
    s = make_sample("needle", length=2000, seed=0, depth=0.5, count_tokens=words, haystack_files=[str(f)])
    rest = s.context.replace(s.evidence[0], " ")
    assert set(re.findall(r"\w+", rest)) <= set(re.findall(r"\w+", text))
    assert abs(words(s.context) - 2000) <= 25


def test_multikey_distractors_share_the_template() -> None:
    s = sample("multikey", length=10000)
    needles = re.findall(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.", s.context)
    assert len(needles) == 4
    keys = [k for k, _ in needles]
    assert len(set(keys)) == 4 and s.meta["key"] in keys
    assert dict(needles)[s.meta["key"]] == s.answers[0]
    assert s.question == f"What is the special magic number for {s.meta['key']} mentioned in the provided text?"
    assert sorted(s.meta["distractors"]) == sorted(v for k, v in needles if k != s.meta["key"])


def test_multivalue_asks_for_every_value() -> None:
    s = sample("multivalue", length=10000)
    found = re.findall(
        r"One of the special magic numbers for " + re.escape(s.meta["key"]) + r" is: (\d{7})\.", s.context
    )
    assert sorted(found) == sorted(s.answers) and len(s.answers) == 4
    assert len(s.evidence) == 4
    assert s.question == f"What are all the special magic numbers for {s.meta['key']} mentioned in the provided text?"


def test_vartrack_chain_in_stream_order_with_distractor_chains() -> None:
    s = sample("vartrack", length=10000, depth=0.2)
    names = s.answers
    assert 5 <= len(names) <= 6 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    value = s.meta["value"]
    assert s.evidence[0] == f"VAR {names[0]} = {value}."
    for a, b, line in zip(names, names[1:], s.evidence[1:]):
        assert line == f"VAR {b} = VAR {a}."
    positions = [s.context.find(e) for e in s.evidence]
    assert positions == sorted(positions)
    assert s.question == f"Find all variables that are assigned the value {value} in the text above."
    all_vars = set(re.findall(r"VAR ([A-Z]{5}) =", s.context))
    assert len(all_vars) >= 3 * 5  # two distractor chains
    assert set(s.meta["distractors"]) == all_vars - set(names)


def _incident_phrases() -> list[str]:
    return [i.phrase.lower() for i in hs.INCIDENTS]


@pytest.mark.parametrize("seed", range(8))
def test_logs_one_incident_of_the_asked_kind_and_clean_routine_lines(seed: int) -> None:
    s = make_sample("logs", length=8000, seed=seed, depth=0.6, count_tokens=words)
    lines = s.context.split("\n")
    phrase = s.meta["phrase"].lower()
    assert s.evidence[0] in lines
    assert s.answers == [s.meta["service"]]
    assert f"[{s.answers[0]}]" in s.evidence[0]
    assert phrase in s.evidence[0].lower()
    incident_lines = [ln for ln in lines if any(p in ln.lower() for p in _incident_phrases())]
    assert len(incident_lines) == 3  # the asked one + two of other kinds
    assert sum(phrase in ln.lower() for ln in lines) == 1
    # the question names the incident, not the service
    assert s.answers[0] not in s.question.lower()
    # timestamps never go back
    stamps = [datetime.fromisoformat(ln[:23]) for ln in lines]
    assert stamps == sorted(stamps)
    assert all(re.match(r"\S+Z (INFO |DEBUG|WARN |ERROR|FATAL) \[[a-z]+\] ", ln) for ln in lines)


def test_routine_log_lines_never_contain_an_incident_phrase() -> None:
    import itertools
    import random

    phrases = _incident_phrases()
    lines = list(itertools.islice(hs.log_units(random.Random(0)), 30000))
    assert not [ln for ln in lines if any(p in ln.lower() for p in phrases)]
    services = {re.search(r"\[(\w+)\]", ln).group(1) for ln in lines}  # type: ignore[union-attr]
    assert services == set(hs.SERVICES)


def test_million_token_streams_build() -> None:
    for task in ("needle", "logs"):
        s = make_sample(task, length=1_000_000, seed=0, depth=0.5, count_tokens=words)
        assert abs(s.meta["tokens"] - 1_000_000) <= 10_000
        assert s.meta["token_counts"] <= 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        make_sample("nope", length=100, seed=0, count_tokens=words)
    with pytest.raises(ValueError, match="depth"):
        make_sample("passkey", length=100, seed=0, depth=1.5, count_tokens=words)


def test_needle_grid() -> None:
    assert needle_grid([1000, 2000], [0.0, 1.0]) == [(1000, 0.0), (1000, 1.0), (2000, 0.0), (2000, 1.0)]


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def test_first_int_match() -> None:
    assert first_int_match("The pass key is 48213.", "48213")
    assert first_int_match(" 48213 is the pass key", "48213")
    assert not first_int_match("48214", "48213")
    assert not first_int_match("I do not know.", "48213")
    assert not first_int_match("Step 1: the key is 48213", "48213")  # the first integer counts


def test_normalise_and_substring_match() -> None:
    assert normalise("  The Code\n is   K7Q2ZD. ") == "the code is k7q2zd"
    assert normalise('"storage"!') == "storage"
    assert substring_match("The secret code is K7Q2ZD.", "k7q2zd")
    assert substring_match("It was\nthe  storage   service.", "storage service")
    assert not substring_match("The code is K7Q2Z.", "K7Q2ZD")
    assert not substring_match("anything", "  ")


def test_string_match_all() -> None:
    assert string_match_all("VAR abcde, FGHIJ", ["ABCDE", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert string_match_all("1234567 and 7654321", ["1234567", "7654321"]) == 1.0
    assert string_match_all("none", ["x1"]) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])


def test_score_answer_by_task() -> None:
    p = sample("passkey")
    assert score_answer(p, f" {p.answers[0]}.") == 1.0
    assert score_answer(p, "12345") == 0.0 or p.answers[0] == "12345"
    n = sample("needle")
    assert score_answer(n, f"The code is {n.answers[0].lower()}") == 1.0
    assert score_answer(n, "The code is ABC123") == 0.0
    mv = sample("multivalue")
    assert score_answer(mv, ", ".join(mv.answers[:3])) == pytest.approx(0.75)
    vt = sample("vartrack")
    assert score_answer(vt, " ".join(vt.answers)) == 1.0
    assert score_answer(vt, " ".join(vt.answers + vt.meta["distractors"][:1]), strict=True) == 0.0
    mk = sample("multikey")
    assert score_answer(mk, mk.answers[0]) == 1.0
    assert score_answer(mk, " ".join([mk.answers[0], *mk.meta["distractors"]])) == 1.0
    assert score_answer(mk, " ".join([mk.answers[0], *mk.meta["distractors"]]), strict=True) == 0.0
    lg = sample("logs")
    svc = lg.answers[0]
    assert score_answer(lg, f"The {svc} service.", strict=True) == 1.0
    everything = ", ".join(hs.SERVICES)
    assert score_answer(lg, everything) == 1.0
    assert score_answer(lg, everything, strict=True) == 0.0


def test_evidence_recall() -> None:
    mv = sample("multivalue")
    squashed = "\n".join(e.replace(" ", " \n  ", 2) for e in mv.evidence[:2])  # other whitespace
    assert evidence_recall(mv, "filler " + squashed + " filler") == pytest.approx(0.5)
    assert evidence_recall(mv, mv.context) == 1.0
    assert evidence_recall(mv, "") == 0.0


def test_evidence_rank_and_straddling_needles() -> None:
    s = sample("needle")
    ev, code = s.evidence[0], s.answers[0]
    at = s.context.find(ev)
    before, after = s.context[at - 300 : at], s.context[at + len(ev) : at + len(ev) + 300]
    whole = before + ev
    # cut inside the needle, before the code: the half holding the code counts
    cut = ev.index(" is ") + 1
    head, tail = before + ev[:cut], ev[cut:] + after
    assert evidence_rank(s, ["nothing here", head, tail, whole]) == 3
    assert contains_evidence(s, tail) and not contains_evidence(s, head)
    # cut through the code itself: neither half counts
    mid = ev.index(code) + 3
    assert evidence_rank(s, [before + ev[:mid], ev[mid:] + after]) is None
    assert evidence_rank(s, ["nothing", whole.replace(" ", "\n")]) == 2
    assert evidence_rank(s, []) is None
