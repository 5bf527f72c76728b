"""Real-text tasks: corpora read as they are, needles placed once, paraphrases checked in code."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from xl3m_stream.evaluate import realtext
from xl3m_stream.evaluate.metrics import contains_evidence, score_answer
from xl3m_stream.evaluate.tasks import REAL_TASKS, make_sample

_WORD = re.compile(r"\w+|[^\w\s]")


def words(s: str) -> int:
    return len(_WORD.findall(s))


MANUAL = """\x1f
File: tool.info,  Node: Top,  Next: Invoking,  Up: (dir)

The tool copies files from one place to another. It keeps permissions
when asked to, and it can follow symbolic links.

   Options are read from the command line. Each option has a long form
and most have a short form as well.

‘--verbose’
     Print the name of each file as it is copied.

\x1f
File: tool.info,  Node: Invoking,  Prev: Top,  Up: Top

An exit status of zero indicates success, and a nonzero value indicates
failure. The tool never removes a file it did not create.
\x1f
Tag Table:
Node: Top\x7f64
End Tag Table
"""

LOG = "\n".join(
    f"2025-06-24 14:{m:02d}:{s:02d} status installed lib{w}:amd64 1.{m}-{s}"
    for m in range(10)
    for s, w in enumerate(["alpha", "beta", "gamma", "delta", "omega"])
)


@pytest.fixture
def corpora(tmp_path: Path) -> dict[str, list[str]]:
    manual = tmp_path / "tool.info.gz"
    manual.write_bytes(gzip.compress(MANUAL.encode()))
    plain = tmp_path / "notes.txt"
    plain.write_text("Notes on the tool.\n\nThe tool has no configuration file.\n", encoding="utf-8")
    log = tmp_path / "dpkg.log"
    log.write_text(LOG + "\n", encoding="utf-8")
    return {"prose": [str(manual), str(plain)], "log": [str(log)]}


def test_every_paraphrase_shares_no_content_word_with_its_needle() -> None:
    data = realtext.templates()
    assert len(data["prose"]) >= 10 and len(data["log"]) >= 10
    for t in data["prose"]:
        assert not realtext.content_words(t["needle"]) & realtext.content_words(t["paraphrase"]), t
        assert realtext.content_words(t["needle"]) & realtext.content_words(t["lexical"]), t


def test_the_check_refuses_a_paraphrase_that_repeats_the_needle() -> None:
    bad = {
        "prose": [
            {"needle": "The vault code is {code}.", "lexical": "What is the vault code?", "paraphrase": "Which vaults?"}
        ],
        "log": [],
    }
    with pytest.raises(ValueError, match="shares"):
        realtext.check_templates(bad)


def test_info_manuals_lose_their_markup(corpora) -> None:
    text = realtext.read_corpus_file(corpora["prose"][0])
    assert "File: tool.info" not in text and "\x1f" not in text and "Tag Table" not in text
    assert "The tool copies files" in text and "An exit status of zero" in text


def test_binary_files_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "blob.txt"
    p.write_bytes(b"text\x00\x01\x02")
    with pytest.raises(ValueError, match="NUL"):
        realtext.read_corpus_file(p)


def test_no_corpus_names_what_was_looked_for(monkeypatch) -> None:
    monkeypatch.setattr(realtext, "LOG_CORPUS", ("/nonexistent/dpkg.log",))
    with pytest.raises(FileNotFoundError, match="--corpus"):
        realtext.default_corpus("log")


@pytest.mark.parametrize("task", REAL_TASKS)
@pytest.mark.parametrize("seed", range(4))
def test_a_sample_holds_its_needle_once_in_real_text(corpora, task: str, seed: int) -> None:
    files = corpora["log" if task == "log-real" else "prose"]
    s = make_sample(task, length=3000, seed=seed, depth=0.5, count_tokens=words, haystack_files=files)
    assert s.task == task and abs(s.meta["tokens"] - 3000) <= 0.01 * 3000 + 60  # one unit at most
    if task == "log-real":
        t = realtext.templates()["log"][s.meta["template"]]
        expected = t["lines"].count("{" + t["answer"] + "}")
    else:
        expected = 1
    assert s.context.count(s.answers[0]) == expected  # only where the needle put it
    assert contains_evidence(s, s.context)
    evidence_at = s.context.find(s.evidence[0])
    assert evidence_at >= 0 and 0.3 < s.meta["char_depth"] < 0.7
    # every other line or paragraph comes from the corpus
    source = "".join(realtext.read_corpus_file(f) for f in files)
    pieces = [p for p in re.split(r"\n+", s.context) if p.strip() and s.answers[0] not in p]
    assert all(p.strip() in source for p in pieces[:50])
    assert score_answer(s, f"It is {s.answers[0]}.") == 1.0 and score_answer(s, "no idea") == 0.0


def test_lexical_and_paraphrase_share_needle_and_differ_in_question(corpora) -> None:
    a = make_sample("prose-lexical", length=2000, seed=3, count_tokens=words, haystack_files=corpora["prose"])
    b = make_sample("prose-paraphrase", length=2000, seed=3, count_tokens=words, haystack_files=corpora["prose"])
    assert a.meta["template"] == b.meta["template"] and a.question != b.question
    assert not realtext.content_words(b.question) & realtext.content_words(b.evidence[0])


def test_log_needles_take_the_previous_lines_timestamp(corpora) -> None:
    seen_ts = 0
    for seed in range(12):
        s = make_sample(
            "log-real", length=2000, seed=seed, depth=0.5, count_tokens=words, haystack_files=corpora["log"]
        )
        line = s.evidence[0]
        assert s.answers[0] in line
        if realtext.timestamp_of(line):
            seen_ts += 1
            before = s.context[: s.context.find(line)].rstrip("\n").rsplit("\n", 1)[-1]
            assert realtext.timestamp_of(before) == realtext.timestamp_of(line)
    assert seen_ts >= 3


def test_consecutive_seeds_cover_every_template(corpora) -> None:
    n = len(realtext.templates()["prose"])
    seen = {
        make_sample("prose-paraphrase", length=1000, seed=i, count_tokens=words, haystack_files=corpora["prose"]).meta[
            "template"
        ]
        for i in range(n)
    }
    assert seen == set(range(n))


@pytest.mark.parametrize("kind", ["prose", "log"])
def test_the_machines_own_corpus_when_present(kind: str) -> None:
    try:
        files = realtext.default_corpus(kind)
    except FileNotFoundError:
        pytest.skip(f"no {kind} corpus on this machine")
    ident = realtext.corpus_identity(files)
    assert len(ident["sha256"]) == 64 and all(f["chars"] > 0 for f in ident["files"])
    task = "log-real" if kind == "log" else "prose-paraphrase"
    s = make_sample(task, length=20000, seed=1, count_tokens=words)
    assert contains_evidence(s, s.context) and s.meta["corpus"] == files


def test_a_giant_paragraph_does_not_shrink_the_sample(tmp_path: Path) -> None:
    """One paragraph of 100 k characters (an index, a table) once made a 16 k-token sample come
    out at a sixth of its length: units are bounded, so every seed is sized to its length."""
    lines = [f"entry {i}: see section {i % 97} for the option {i * 7}" for i in range(2500)]
    (tmp_path / "index.txt").write_text(
        MANUAL.replace("\x1f", "") + "\n\n" + "\n".join(lines) + "\n\n" + MANUAL.replace("\x1f", "")
    )
    units = realtext.prose_units([tmp_path / "index.txt"])
    assert all(len(next(units)) <= realtext.UNIT_CHARS + 2 for _ in range(500))
    for seed in range(8):
        s = make_sample(
            "prose-paraphrase",
            length=12000,
            seed=seed,
            depth=None,
            count_tokens=words,
            haystack_files=[str(tmp_path / "index.txt")],
        )
        assert abs(int(s.meta["tokens"]) - 12000) <= 0.05 * 12000, (seed, s.meta["tokens"])
