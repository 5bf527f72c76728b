"""Seeded long-context tasks: passkey, prose needle, RULER-style needles, variable tracking, logs.

``make_sample(task, length=..., seed=..., count_tokens=...)`` builds one :class:`Sample`: a
long ``context`` (the stream) of about ``length`` tokens as counted by the caller's
``count_tokens``, a ``question`` asked after it, the expected ``answers`` and the exact
``evidence`` substrings (the needle lines). Same arguments, same sample: every random choice
comes from ``random.Random(seed)``.

How the length is reached without tokenizing a 2M-token text over and over: the filler is an
endless seeded stream of units (sentences or log lines); the tokens per character are measured
on a ~20k-character prefix, the text is built to that estimate and counted once; if it is more
than 0.5% off, the number of units is corrected with the measured rate of the whole text and
counted again (at most three full counts; the closest build is kept). The result is within
``max(1% of length, one filler unit)`` of ``length``; ``meta["tokens"]`` holds the exact count.

Needles go between units (so at a sentence or line boundary) at the given relative depth:
``depth`` 0 puts the main evidence right after the header, 1 at the very end.
``meta["char_depth"]`` is where it actually starts, as a share of ``len(context)``.

What the random answers guarantee (checked on every build, redrawn on a collision): an
answer code, number or variable name occurs in the context only inside the evidence. The
``logs`` answer is a service name, which routine lines use too; there the incident phrase
is what occurs once.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from . import haystack as hs
from . import realtext


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One generated task instance. See the module docstring for the guarantees.

    ``evidence[0]`` is the main evidence (the needle at ``depth``); ``meta["evidence_keys"]``
    gives, for each evidence string, a short distinctive part of it (the answer code, the
    value...) that :func:`~xl3m_stream.evaluate.metrics.evidence_rank` accepts when a needle
    straddles two segments. ``meta["distractors"]`` lists strings that a correct answer should
    not contain (other keys' values, other services...), used by strict scoring.
    """

    task: str
    seed: int
    length: int
    depth: float | None
    context: str
    question: str
    answers: list[str]
    evidence: list[str]
    meta: dict[str, Any] = {}


GENERATED_TASKS: tuple[str, ...] = ("passkey", "needle", "multikey", "multivalue", "vartrack", "logs")
"""Tasks whose haystack is generated in code (seeded)."""
REAL_TASKS: tuple[str, ...] = ("prose-lexical", "prose-paraphrase", "log-real")
"""Tasks on real text (:mod:`~xl3m_stream.evaluate.realtext`): haystacks no one here wrote."""
TASKS: tuple[str, ...] = (*GENERATED_TASKS, *REAL_TASKS)
"""Every task :func:`make_sample` knows."""

PASSKEY_HEADER = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
PASSKEY_FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
PASSKEY_QUESTION = "What is the pass key? The pass key is"

_TOLERANCE = 0.005
"""Relative length error accepted without another full count."""
_SAMPLE_CHARS = 20_000
"""Characters of filler whose tokens are counted to estimate the tokens per character."""


@dataclass
class _Insert:
    """A needle to place at relative ``depth``; ``text`` may depend on the unit before it."""

    depth: float
    text: str | Callable[[str | None], str]


def needle_grid(lengths: Sequence[int], depths: Sequence[float]) -> list[tuple[int, float]]:
    """Every ``(length, depth)`` pair, lengths outer: the classic needle-in-a-haystack grid."""
    return [(n, d) for n in lengths for d in depths]


def default_depths(n: int = 11) -> list[float]:
    """``n`` evenly spaced depths from 0 to 1 (0, 0.1, ..., 1 for ``n=11``)."""
    if n < 2:
        return [0.5]
    return [i / (n - 1) for i in range(n)]


# --------------------------------------------------------------------------------------
# Building a context of a target length
# --------------------------------------------------------------------------------------


class _Pool:
    """The first units of an endless filler stream, with their cumulative character counts."""

    def __init__(self, units: Iterator[str]) -> None:
        self._it = units
        self.units: list[str] = []
        self.cum: list[int] = [0]  # cum[i] = characters in units[:i]

    def ensure_chars(self, chars: int) -> None:
        while self.cum[-1] < chars:
            u = next(self._it)
            self.units.append(u)
            self.cum.append(self.cum[-1] + len(u))

    def n_for_chars(self, chars: float) -> int:
        """The number of leading units whose characters come closest to ``chars``."""
        self.ensure_chars(int(chars) + 1)
        i = bisect.bisect_left(self.cum, chars)
        if i > 0 and chars - self.cum[i - 1] < self.cum[i] - chars:
            i -= 1
        return i


def _assemble(
    header: str, units: list[str], cum: list[int], n: int, inserts: list[_Insert], *, sep: str, line: bool
) -> str:
    """Header + ``units[:n]`` with the inserts at their depths (stable for equal depths).

    ``line=True`` puts each insert on a line of its own; otherwise it is a unit like the
    others, followed by ``sep``.
    """
    total = cum[n]
    placed = sorted(
        ((min(n, bisect.bisect_left(cum, ins.depth * total, 0, n + 1)), k, ins) for k, ins in enumerate(inserts)),
        key=lambda x: (x[0], x[1]),
    )
    pieces: list[str] = [header]
    prev = 0
    for idx, _, ins in placed:
        chunk = "".join(units[prev:idx])
        before = units[idx - 1] if idx > 0 else None
        text = ins.text(before) if callable(ins.text) else ins.text
        if line:
            chunk = chunk.rstrip(" ")
            if chunk and not chunk.endswith("\n"):
                chunk += "\n"
            pieces += [chunk, text + "\n"]
        else:
            pieces += [chunk, text + sep]
        prev = idx
    pieces.append("".join(units[prev:n]))
    return "".join(pieces).rstrip()


def _build(
    *,
    header: str,
    units: Iterator[str],
    inserts: list[_Insert],
    length: int,
    count_tokens: Callable[[str], int],
    sep: str = " ",
    line: bool = False,
) -> tuple[str, int, int]:
    """The context closest to ``length`` tokens; returns ``(context, tokens, full_counts)``."""
    pool = _Pool(units)
    pool.ensure_chars(_SAMPLE_CHARS)
    sample_n = pool.n_for_chars(_SAMPLE_CHARS)
    sample_text = "".join(pool.units[:sample_n])
    tpc = max(count_tokens(sample_text), 1) / max(len(sample_text), 1)
    fixed_text = header + " ".join(i.text if isinstance(i.text, str) else i.text(None) for i in inserts)
    fixed = count_tokens(fixed_text) if fixed_text else 0

    n = pool.n_for_chars(max(0.0, (length - fixed) / tpc))
    best: tuple[int, str, int] | None = None  # (error, text, tokens)
    counts = 0
    tried: set[int] = set()
    for _ in range(3):
        text = _assemble(header, pool.units, pool.cum, n, inserts, sep=sep, line=line)
        tokens = count_tokens(text)
        counts += 1
        tried.add(n)
        if best is None or abs(tokens - length) < best[0]:
            best = (abs(tokens - length), text, tokens)
        if abs(tokens - length) <= _TOLERANCE * length or (pool.cum[n] == 0 and tokens >= length):
            break
        body_tokens = tokens - fixed
        if pool.cum[n] > 0 and body_tokens > 0:
            tpc = body_tokens / pool.cum[n]
        new_n = pool.n_for_chars(max(0.0, pool.cum[n] + (length - tokens) / tpc))
        if new_n == n or new_n in tried:
            break
        n = new_n
    assert best is not None
    return best[1], best[2], counts


# --------------------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------------------


def _prose(rng: random.Random, haystack_files: Sequence[str]) -> Iterator[str]:
    return hs.file_units(haystack_files) if haystack_files else hs.prose_units(rng)


def _distinct(draw: Callable[[], str], n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = draw()
        if v not in taken:
            taken.add(v)
            out.append(v)
    return out


def _only_in_needles(context: str, needles: Sequence[str], strings: Sequence[str]) -> bool:
    """True when each of ``strings`` occurs in ``context`` only inside the inserted ``needles``."""
    return all(context.count(s) == sum(t.count(s) for t in needles) for s in strings)


def make_sample(
    task: str,
    *,
    length: int,
    seed: int,
    depth: float | None = None,
    count_tokens: Callable[[str], int],
    haystack_files: Sequence[str] = (),
) -> Sample:
    """Build one seeded sample of ``task`` (one of :data:`TASKS`) with about ``length`` tokens.

    ``depth`` (0..1) places the main evidence; ``None`` draws it from the seed. ``count_tokens``
    is the tokenizer of the model under test (e.g. ``lambda s: len(tok.encode(s))``).
    ``haystack_files`` replaces the procedural prose of the needle, multikey, multivalue and
    vartrack tasks with the sentences of those text files (repeated as needed); for the
    real-text tasks it is the corpus (default: :func:`~xl3m_stream.evaluate.realtext.default_corpus`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    rng = random.Random(f"xl3m-eval/{task}/{seed}")
    if depth is None:
        depth = rng.random()
    builder = functools.partial(_real_text, task, seed=seed) if task in REAL_TASKS else _BUILDERS[task]
    for _attempt in range(8):
        spec = builder(rng, depth, haystack_files)
        context, tokens, counts = _build(
            header=spec.header,
            units=spec.units,
            inserts=spec.inserts,
            length=length,
            count_tokens=count_tokens,
            sep=spec.sep,
            line=spec.line,
        )
        evidence = [spec.resolve(context, e) for e in spec.evidence]
        if all(e in context for e in evidence) and _only_in_needles(context, spec.needles, spec.unique):
            break
    else:  # pragma: no cover - needs a haystack file full of our random codes
        raise RuntimeError(f"could not place unique {task} answers in the haystack")
    main = context.find(evidence[0])
    meta = dict(spec.meta)
    meta.update(
        tokens=tokens,
        token_counts=counts,
        char_depth=main / max(1, len(context)),
        evidence_keys=list(spec.keys),
    )
    return Sample(
        task=task,
        seed=seed,
        length=length,
        depth=depth,
        context=context,
        question=spec.question,
        answers=list(spec.answers),
        evidence=evidence,
        meta=meta,
    )


@dataclass
class _Spec:
    """What a task builder hands to :func:`make_sample`."""

    header: str
    units: Iterator[str]
    inserts: list[_Insert]
    question: str
    answers: list[str]
    evidence: list[str]
    """Evidence strings; for logs a prefix-free marker that :meth:`resolve` completes."""
    keys: list[str]
    """A distinctive part of each evidence string (see :class:`Sample`)."""
    needles: list[str]
    """Every inserted text (distractors too; for logs the message part of each line)."""
    unique: list[str]
    """Strings that must occur in the context only inside ``needles``."""
    meta: dict[str, Any]
    sep: str = " "
    line: bool = False

    def resolve(self, context: str, evidence: str) -> str:
        """The full evidence line for a log incident (its timestamp depends on placement)."""
        if not evidence.startswith("\x00"):
            return evidence
        marker = evidence[1:]
        at = context.find(marker)
        if at < 0:
            return marker
        start = context.rfind("\n", 0, at) + 1
        end = context.find("\n", at)
        return context[start : end if end >= 0 else len(context)]


def _passkey(rng: random.Random, depth: float, files: Sequence[str]) -> _Spec:
    k = str(rng.randint(10000, 99999))
    needle = f"The pass key is {k}. Remember it. {k} is the pass key."

    def units() -> Iterator[str]:
        for s in itertools.cycle(PASSKEY_FILLER):
            yield s + " "

    return _Spec(
        header=PASSKEY_HEADER + "\n",
        units=units(),
        inserts=[_Insert(depth, needle)],
        question=PASSKEY_QUESTION,
        answers=[k],
        evidence=[needle],
        keys=[k],
        needles=[needle],
        unique=[k],
        meta={"pass_key": k},
        line=True,
    )


def _needle(rng: random.Random, depth: float, files: Sequence[str]) -> _Spec:
    noun = rng.choice(hs.ARCHIVE_NOUNS)
    code = hs.random_code(rng)
    needle = f"The secret code of the {noun} archive is {code}."
    return _Spec(
        header="",
        units=_prose(random.Random(rng.getrandbits(64)), files),
        inserts=[_Insert(depth, needle)],
        question=f"What is the secret code of the {noun} archive?",
        answers=[code],
        evidence=[needle],
        keys=[code],
        needles=[needle],
        unique=[code],
        meta={
            "noun": noun,
            "question_paraphrase": f"Which password opens the records kept by the {noun}?",
        },
    )


def _magic(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _multikey(rng: random.Random, depth: float, files: Sequence[str]) -> _Spec:
    n_distract = 3
    keys = _distinct(lambda: hs.random_key(rng), 1 + n_distract, set())
    values = _distinct(lambda: _number(rng), 1 + n_distract, set())
    needles = [_magic(k, v) for k, v in zip(keys, values)]
    inserts = [_Insert(depth, needles[0])] + [_Insert(rng.random(), t) for t in needles[1:]]
    return _Spec(
        header="",
        units=_prose(random.Random(rng.getrandbits(64)), files),
        inserts=inserts,
        question=f"What is the special magic number for {keys[0]} mentioned in the provided text?",
        answers=[values[0]],
        evidence=[needles[0]],
        keys=[values[0]],
        needles=needles,
        unique=values + keys,
        meta={"key": keys[0], "distractor_keys": keys[1:], "distractors": values[1:]},
    )


def _multivalue(rng: random.Random, depth: float, files: Sequence[str]) -> _Spec:
    n_values = 4
    key = hs.random_key(rng)
    values = _distinct(lambda: _number(rng), n_values, set())
    needles = [_magic(key, v) for v in values]
    other_depths = [rng.random() for _ in needles[1:]]
    inserts = [_Insert(depth, needles[0])] + [_Insert(d, t) for d, t in zip(other_depths, needles[1:])]
    # evidence: main first, then the others in stream order
    rest = sorted(zip(other_depths, range(1, n_values)))
    order = [0] + [i for _, i in rest]
    return _Spec(
        header="",
        units=_prose(random.Random(rng.getrandbits(64)), files),
        inserts=inserts,
        question=f"What are all the special magic numbers for {key} mentioned in the provided text?",
        answers=values,
        evidence=[needles[i] for i in order],
        keys=[values[i] for i in order],
        needles=needles,
        unique=values + [key],
        meta={"key": key},
    )


def _chain(names: list[str], value: str) -> list[str]:
    lines = [f"VAR {names[0]} = {value}"]
    lines += [f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(names)]
    return lines


def _vartrack(rng: random.Random, depth: float, files: Sequence[str]) -> _Spec:
    hops = rng.randint(4, 5)
    n_distract = 2
    taken: set[str] = set()
    names = _distinct(lambda: hs.random_var(rng), hops + 1, taken)
    values = _distinct(lambda: str(rng.randint(10000, 99999)), 1 + n_distract, set())
    chain = _chain(names, values[0])
    # the chain in stream order: the first line at `depth`, the hops after it
    depths = [depth] + sorted(depth + (1.0 - depth) * rng.random() for _ in chain[1:])
    inserts = [_Insert(d, t + ".") for d, t in zip(depths, chain)]
    distract_names: list[str] = []
    distract_lines: list[str] = []
    for v in values[1:]:
        dn = _distinct(lambda: hs.random_var(rng), hops + 1, taken)
        distract_names += dn
        lines = _chain(dn, v)
        distract_lines += lines
        ds = sorted(rng.random() for _ in lines)
        inserts += [_Insert(d, t + ".") for d, t in zip(ds, lines)]
    return _Spec(
        header="",
        units=_prose(random.Random(rng.getrandbits(64)), files),
        inserts=inserts,
        question=f"Find all variables that are assigned the value {values[0]} in the text above.",
        answers=names,
        evidence=[t + "." for t in chain],
        keys=[t + "." for t in chain],
        needles=chain + distract_lines,
        unique=names + distract_names + values,
        meta={"value": values[0], "hops": hops, "distractors": distract_names, "distractor_lines": distract_lines},
    )


def _logs(rng: random.Random, depth: float, files: Sequence[str]) -> _Spec:
    incident = rng.choice(hs.INCIDENTS)
    service = rng.choice(hs.SERVICES)
    message = hs.incident_message(incident, service, random.Random(rng.getrandbits(64)))
    others = [i for i in hs.INCIDENTS if i is not incident]
    distract_incidents = rng.sample(others, 2)
    distract_services = [rng.choice([s for s in hs.SERVICES if s != service]) for _ in distract_incidents]
    distract_msgs = [
        hs.incident_message(i, s, random.Random(rng.getrandbits(64)))
        for i, s in zip(distract_incidents, distract_services)
    ]

    def line_after(level: str, svc: str, msg: str) -> Callable[[str | None], str]:
        def text(before: str | None) -> str:
            t = hs.parse_log_time(before) + 1 if before else 0
            return hs.format_log_line(t, level, svc, msg)

        return text

    inserts = [_Insert(depth, line_after(incident.level, service, message))]
    inserts += [
        _Insert(rng.random(), line_after(i.level, s, m))
        for i, s, m in zip(distract_incidents, distract_services, distract_msgs)
    ]
    marker = f"[{service}] {message}"
    others_services = [s for s in hs.SERVICES if s != service]
    return _Spec(
        header="",
        units=hs.log_units(random.Random(rng.getrandbits(64))),
        inserts=inserts,
        question=incident.question,
        answers=[service],
        evidence=["\x00" + marker],
        keys=[incident.phrase],
        needles=[message] + distract_msgs,
        unique=[message, incident.phrase],
        meta={
            "incident": incident.kind,
            "phrase": incident.phrase,
            "service": service,
            "distractor_incidents": [i.kind for i in distract_incidents],
            "distractor_services": distract_services,
            "distractors": others_services,
        },
        sep="\n",
    )


_BUILDERS: dict[str, Callable[[random.Random, float, Sequence[str]], _Spec]] = {
    "passkey": _passkey,
    "needle": _needle,
    "multikey": _multikey,
    "multivalue": _multivalue,
    "vartrack": _vartrack,
    "logs": _logs,
}


def _rotated(units: Iterator[str], rng: random.Random, period: int = 4096) -> Iterator[str]:
    """``units`` (an endless corpus) from a random one of its first ``period`` units on, so
    samples with different seeds cut different haystacks from one corpus."""
    return itertools.islice(units, rng.randrange(period), None)


def _real_text(task: str, rng: random.Random, depth: float, files: Sequence[str], *, seed: int) -> _Spec:
    """A needle with a random answer in a haystack of real text (see :mod:`realtext`).

    The template is ``seed`` modulo the number of templates, so consecutive seeds use
    different needles and questions.
    """
    data = realtext.templates()
    if task == "log-real":
        corpus = list(files) or realtext.default_corpus("log")
        t = data["log"][seed % len(data["log"])]
        fields = realtext.random_fields(rng)
        value = fields[t["answer"]]
        plain = realtext.fill_log_lines(t["lines"], fields, None)
        line = next(x for x in plain.split("\n") if value in x)
        marker = line[max(0, line.index(value) - 40) :]  # the answer's line, from shortly before the answer

        def lines(before: str | None) -> str:
            return realtext.fill_log_lines(t["lines"], fields, before)

        return _Spec(
            header="",
            units=_rotated(realtext.log_units(corpus), rng),
            inserts=[_Insert(depth, lines)],
            question=t["question"],
            answers=[value],
            evidence=["\x00" + marker],
            keys=[value],
            needles=[plain],
            unique=[value],
            meta={"template": seed % len(data["log"]), "corpus": corpus, "field": t["answer"]},
            sep="\n",
            line=True,
        )
    corpus = list(files) or realtext.default_corpus("prose")
    t = data["prose"][seed % len(data["prose"])]
    code = hs.random_code(rng, 8)
    needle = t["needle"].format(code=code)
    style = "lexical" if task == "prose-lexical" else "paraphrase"
    return _Spec(
        header="",
        units=_rotated(realtext.prose_units(corpus), rng),
        inserts=[_Insert(depth, needle)],
        question=t[style],
        answers=[code],
        evidence=[needle],
        keys=[code],
        needles=[needle],
        unique=[code],
        meta={"template": seed % len(data["prose"]), "corpus": corpus, "question_style": style},
        sep="\n\n",
    )
