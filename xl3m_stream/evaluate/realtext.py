"""Real text for the evaluation: corpora no one here wrote, and the needles put into them.

Generated prose flatters every retriever: its questions share their rare words with the
evidence. The real-text tasks (``prose-lexical``, ``prose-paraphrase``, ``log-real`` in
:mod:`~xl3m_stream.evaluate.tasks`) cut their haystacks from

* **prose**: technical manuals installed with the operating system (the GNU info manuals of
  coreutils, gettext, sed, grep, ... under ``/usr/share/info``), or text files the user names;
* **logs**: the machine's own package-manager logs (``/var/log/dpkg.log``, apt's ``term.log``
  and ``history.log``), or log files the user names;

and insert one needle with a random answer. The needles and their questions are data
(``xl3m_stream/data/realtext.json``). A paraphrased question shares no content word with its
needle; :func:`content_words` is the check, and :func:`check_templates` runs it on every
template.

Corpus files are read as text (gzip-compressed ``.gz`` files too); a file with NUL bytes is
refused as binary. :func:`corpus_identity` names the exact text a run used (paths, sizes and
one SHA-256), so a figure can say what it was measured on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import string
from collections.abc import Iterator, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..relevance import STOPWORDS

PROSE_CORPUS = (
    "/usr/share/info/coreutils.info.gz",
    "/usr/share/info/gettext.info.gz",
    "/usr/share/info/find.info-1.gz",
    "/usr/share/info/gnupg.info-1.gz",
    "/usr/share/info/gnupg.info-2.gz",
    "/usr/share/info/wget.info.gz",
    "/usr/share/info/diffutils.info.gz",
    "/usr/share/info/sed.info.gz",
    "/usr/share/info/grep.info.gz",
)
"""Default prose: GNU manuals a Debian system installs with its base packages (those present are used)."""

LOG_CORPUS = ("/var/log/dpkg.log", "/var/log/apt/term.log", "/var/log/apt/history.log")
"""Default logs: the machine's own package-manager logs (those present and non-empty are used)."""

_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def _stem(word: str) -> str:
    """A crude stem (``tracked`` -> ``track``, ``disks`` -> ``disk``): enough to catch shared words."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """The stems of ``text``'s content words (lower case, no stopwords, no template fields)."""
    text = re.sub(r"\{\w+\}", " ", text.lower())
    return {_stem(w) for w in _WORD.findall(text) if w not in STOPWORDS}


@cache
def templates() -> dict[str, Any]:
    """The needle templates (``prose`` and ``log``), read once from the package data."""
    raw = resources.files("xl3m_stream").joinpath("data/realtext.json").read_text(encoding="utf-8")
    data = json.loads(raw)
    check_templates(data)
    return data


def check_templates(data: dict[str, Any]) -> None:
    """Refuse templates a task cannot use: a paraphrase sharing a content word with its needle,
    a lexical question sharing none, a log answer field its lines do not hold."""
    for t in data["prose"]:
        shared = content_words(t["needle"]) & content_words(t["paraphrase"])
        if shared:
            raise ValueError(f"paraphrase {t['paraphrase']!r} shares {sorted(shared)} with its needle")
        if not content_words(t["needle"]) & content_words(t["lexical"]):
            raise ValueError(f"lexical question {t['lexical']!r} shares no word with its needle")
        if "{code}" not in t["needle"]:
            raise ValueError(f"needle {t['needle']!r} has no {{code}}")
    for t in data["log"]:
        if "{" + t["answer"] + "}" not in t["lines"]:
            raise ValueError(f"log needle {t['lines']!r} does not hold its answer field {t['answer']}")


# --------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------


def default_corpus(kind: str) -> list[str]:
    """The default corpus files of ``kind`` ("prose" or "log") present on this machine.

    Raises ``FileNotFoundError`` naming what was looked for when none is present.
    """
    candidates = {"prose": PROSE_CORPUS, "log": LOG_CORPUS}[kind]
    found = [p for p in candidates if Path(p).is_file() and Path(p).stat().st_size > 0]
    if not found:
        raise FileNotFoundError(
            f"no {kind} corpus on this machine (looked for {', '.join(candidates)}): name files with --corpus PATH"
        )
    return found


def read_corpus_file(path: str | Path) -> str:
    """A corpus file as text (``.gz`` decompressed, invalid UTF-8 replaced); binary files refused."""
    p = Path(path)
    data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    if ".info" in p.name:  # info markup for index nodes: NUL BS [index NUL BS ]
        data = re.sub(rb"\x00\x08\[[^\x00]*\x00\x08\]", b"", data)
    if b"\x00" in data:
        raise ValueError(f"corpus file {p} holds NUL bytes: not a text file")
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return _clean_info(text) if ".info" in p.name else text


def _clean_info(text: str) -> str:
    """An info manual's text without its node headers (``File: ..., Node: ...``) and tag table."""
    out = []
    for block in text.split("\x1f"):
        lines = block.lstrip("\n").split("\n")
        if lines and lines[0].startswith(("Tag Table:", "End Tag Table", "Local Variables:")):
            continue
        if lines and lines[0].startswith("File: "):
            lines = lines[1:]
        out.append("\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out))


def corpus_identity(paths: Sequence[str | Path]) -> dict[str, Any]:
    """What a run's corpus was: the files, their sizes, and one SHA-256 over their text."""
    h = hashlib.sha256()
    files = []
    for p in paths:
        text = read_corpus_file(p)
        h.update(text.encode("utf-8"))
        files.append({"path": str(p), "chars": len(text)})
    return {"files": files, "sha256": h.hexdigest()}


UNIT_CHARS = 2000
"""Longest haystack unit: a longer paragraph (an index, a table) is cut at line ends, so a
sample can be sized to its length (one 100 k-character unit once made a 16 k-token sample
come out at 2.5 k tokens)."""


def _bounded(paragraph: str, limit: int = UNIT_CHARS) -> list[str]:
    """``paragraph`` as pieces of at most ``limit`` characters, cut after a newline where one
    is near (else hard-cut)."""
    pieces: list[str] = []
    while len(paragraph) > limit:
        cut = paragraph.rfind("\n", 0, limit)
        cut = cut + 1 if cut > limit // 4 else limit
        pieces.append(paragraph[:cut])
        paragraph = paragraph[cut:]
    return [*pieces, paragraph]


def prose_units(paths: Sequence[str | Path]) -> Iterator[str]:
    """The paragraphs of the prose files, in order, repeated endlessly (each ends with a blank
    line; a paragraph over :data:`UNIT_CHARS` characters is cut into several units)."""
    units: list[str] = []
    for p in paths:
        for para in re.split(r"\n\s*\n", read_corpus_file(p)):
            *head, last = _bounded(para.strip("\n"))
            units += [*head, last + "\n\n"]
    units = [u for u in units if u.strip()]
    if not units:
        raise ValueError(f"the prose corpus holds no text: {list(map(str, paths))}")
    while True:
        yield from units


def log_units(paths: Sequence[str | Path]) -> Iterator[str]:
    """The lines of the log files, in order, repeated endlessly (each ends with a newline)."""
    units = [line + "\n" for p in paths for line in read_corpus_file(p).split("\n") if line.strip()]
    if not units:
        raise ValueError(f"the log corpus holds no lines: {list(map(str, paths))}")
    while True:
        yield from units


# --------------------------------------------------------------------------------------
# Random names for the needles
# --------------------------------------------------------------------------------------

_TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _letters(rng: random.Random, n: int, alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_fields(rng: random.Random) -> dict[str, str]:
    """One random value for each field a log needle may name (package, device, key, ...)."""
    return {
        "pkg": f"lib{_letters(rng, 4)}{rng.randint(10, 99)}",
        "dev": f"sd{_letters(rng, 3)}",
        "key": _letters(rng, 16, "0123456789ABCDEF"),
        "svc": f"{_letters(rng, 6)}d",
        "proc": f"{_letters(rng, 5)}{rng.randint(2, 9)}",
        "user": _letters(rng, 8),
    }


def timestamp_of(line: str | None) -> str | None:
    """The ``YYYY-MM-DD HH:MM:SS`` a log line starts with, if any."""
    m = _TS.match(line or "")
    return m.group() if m else None


def fill_log_lines(lines: str, fields: dict[str, str], before: str | None) -> str:
    """A log needle's lines with its fields filled; ``{ts}`` takes the previous line's
    timestamp (and is dropped, with its space, when that line has none)."""
    ts = timestamp_of(before)
    text = lines.replace("{ts} ", f"{ts} " if ts else "")
    return text.format(**fields)
