"""Seeded filler generators for the evaluation tasks: procedural prose and a service log.

Both are endless iterators of *units* (a unit is one sentence or one log line, carrying its
own trailing separator), so a task can take exactly as many as its target length needs and
the text is the same prefix whatever the length. Everything is self-written and drawn from a
``random.Random`` the caller seeds; nothing is downloaded and no global state is used.

Guarantees the task generators rely on:

* prose contains no digits, no all-capital words, no hyphenated word pairs and none of the
  words the needles use ("secret", "code", "archive", "magic", "pass key", "VAR"), so a random
  code, number, key or variable name can only occur where a needle puts it;
* routine log lines never contain any incident phrase of :data:`INCIDENTS` (case-insensitive).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any


def _frozen(value: Any) -> Any:
    """JSON lists back as tuples (the word lists are immutable; tuples of tuples stay so)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


_DATA: dict[str, Any] = {
    name: _frozen(value)
    for name, value in json.loads(
        resources.files("xl3m_stream").joinpath("data/haystack.json").read_text(encoding="utf-8")
    ).items()
}
"""The word lists and templates the generators draw from (``data/haystack.json``)."""

# --------------------------------------------------------------------------------------
# Procedural prose
# --------------------------------------------------------------------------------------

_NAMES: tuple[tuple[str, str, str], ...] = tuple((n, "she", "her") for n in _DATA["_NAMES_SHE"]) + tuple(
    (n, "he", "his") for n in _DATA["_NAMES_HE"]
)

_ROLES = _DATA["_ROLES"]

_PLACES = _DATA["_PLACES"]

_TOWN_A = _DATA["_TOWN_A"]
_TOWN_B = _DATA["_TOWN_B"]

_OBJECTS = _DATA["_OBJECTS"]

_ADJECTIVES = _DATA["_ADJECTIVES"]

_PERSON_ADJ = _DATA["_PERSON_ADJ"]

_COLOURS = _DATA["_COLOURS"]

_ANIMALS = _DATA["_ANIMALS"]

_PLANTS = _DATA["_PLANTS"]

_FOODS = _DATA["_FOODS"]

_MATERIALS = _DATA["_MATERIALS"]

_SEASONS = ("spring", "summer", "autumn", "winter")

_TIMES = _DATA["_TIMES"]

_VERBS_T = _DATA["_VERBS_T"]

_VERBS_I = _DATA["_VERBS_I"]

_ADVERBS = _DATA["_ADVERBS"]

_ABSTRACTS = _DATA["_ABSTRACTS"]

_OPINIONS = _DATA["_OPINIONS"]

_NUMBER_WORDS = _DATA["_NUMBER_WORDS"]

_DISTANCES = _DATA["_DISTANCES"]

_TEMPLATES = _DATA["_TEMPLATES"]

_GERUNDS = _DATA["_GERUNDS"]

_FIELD_RE = re.compile(r"\{(\w+)\}")
_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_IRREGULAR = {"goose": "geese", "deer": "deer", "sheep": "sheep", "mouse": "mice"}


def plural(noun: str) -> str:
    """English plural of the nouns used here (last word of a compound)."""
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR:
        p = _IRREGULAR[last]
    elif last.endswith("man"):
        p = last[:-3] + "men"
    elif last.endswith("wife"):
        p = last[:-4] + "wives"
    elif last.endswith(("s", "x", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


@dataclass(frozen=True)
class _ParagraphContext:
    name: tuple[str, str, str]
    name2: tuple[str, str, str]
    role: str
    town: str
    town2: str


def _town(rng: random.Random) -> str:
    return rng.choice(_TOWN_A) + rng.choice(_TOWN_B)


def _fill(template: str, fields: tuple[str, ...], ctx: _ParagraphContext, rng: random.Random) -> str:
    values: dict[str, str] = {}
    for f in fields:
        if f in values:
            continue
        if f == "name":
            values[f] = ctx.name[0]
        elif f == "name2":
            values[f] = ctx.name2[0]
        elif f == "pron":
            values[f] = "her" if ctx.name[1] == "she" else "him"
        elif f == "poss":
            values[f] = ctx.name[2]
        elif f == "poss2":
            values[f] = rng.choice(("her", "his", "their"))
        elif f == "role":
            values[f] = ctx.role if rng.random() < 0.6 else rng.choice(_ROLES)
        elif f == "town":
            values[f] = ctx.town
        elif f == "town2":
            values[f] = ctx.town2
        elif f == "place":
            values[f] = rng.choice(_PLACES)
        elif f == "object":
            values[f] = rng.choice(_OBJECTS)
        elif f == "adj":
            values[f] = rng.choice(_ADJECTIVES)
        elif f == "padj":
            values[f] = rng.choice(_PERSON_ADJ)
        elif f == "colour":
            values[f] = rng.choice(_COLOURS)
        elif f == "animal":
            values[f] = rng.choice(_ANIMALS)
        elif f == "animals":
            values[f] = plural(rng.choice(_ANIMALS))
        elif f == "objects":
            values[f] = plural(rng.choice(_OBJECTS))
        elif f == "roles":
            values[f] = plural(ctx.role)
        elif f == "plant":
            values[f] = rng.choice(_PLANTS)
        elif f == "food":
            values[f] = rng.choice(_FOODS)
        elif f == "material":
            values[f] = rng.choice(_MATERIALS)
        elif f == "season":
            values[f] = rng.choice(_SEASONS)
        elif f == "time":
            values[f] = rng.choice(_TIMES)
        elif f in ("verb_t", "verb_t2"):
            values[f] = rng.choice(_VERBS_T)
        elif f in ("verb_i", "verb_i2"):
            values[f] = rng.choice(_VERBS_I)
        elif f == "adv":
            values[f] = rng.choice(_ADVERBS)
        elif f == "abstract":
            values[f] = rng.choice(_ABSTRACTS)
        elif f == "opinion":
            values[f] = rng.choice(_OPINIONS)
        elif f == "number":
            values[f] = rng.choice(_NUMBER_WORDS)
        elif f == "distance":
            values[f] = rng.choice(_DISTANCES)
        elif f == "gerund":
            values[f] = rng.choice(_GERUNDS)
        else:  # pragma: no cover - a template typo
            raise KeyError(f)
    text = _AN.sub(r"\1n ", template.format(**values))
    return text[0].upper() + text[1:]


_PARSED = tuple((t, tuple(_FIELD_RE.findall(t))) for t in _TEMPLATES)


def prose_units(rng: random.Random) -> Iterator[str]:
    """Endless seeded English prose, one sentence per unit.

    Paragraphs of 3 to 8 sentences share a main character, a role and a town, so the text
    reads as loosely connected stories. A unit ends with ``" "`` or, at the end of a
    paragraph, ``"\\n\\n"``.
    """
    while True:
        ctx = _ParagraphContext(
            name=rng.choice(_NAMES),
            name2=rng.choice(_NAMES),
            role=rng.choice(_ROLES),
            town=_town(rng),
            town2=_town(rng),
        )
        n = rng.randint(3, 8)
        for i in range(n):
            template, fields = rng.choice(_PARSED)
            sentence = _fill(template, fields, ctx, rng)
            yield sentence + ("\n\n" if i == n - 1 else " ")


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def file_units(paths: Sequence[str | Path]) -> Iterator[str]:
    """Sentences of the given text files, in order, repeated endlessly (gkamradt style).

    Paragraphs (blank-line separated) end with ``"\\n\\n"``, other sentences with ``" "``.
    Raises ``ValueError`` when the files hold no text.
    """
    units: list[str] = []
    for p in paths:
        text = Path(p).read_text(encoding="utf-8", errors="replace")
        for para in re.split(r"\n\s*\n", text):
            sentences = [" ".join(s.split()) for s in _SENTENCE_SPLIT.split(para.strip())]
            sentences = [s for s in sentences if s]
            for i, s in enumerate(sentences):
                units.append(s + ("\n\n" if i == len(sentences) - 1 else " "))
    if not units:
        raise ValueError(f"haystack files hold no text: {list(paths)}")
    while True:
        yield from units


# --------------------------------------------------------------------------------------
# Procedural words for needles
# --------------------------------------------------------------------------------------

KEY_WORDS_A = _DATA["KEY_WORDS_A"]
KEY_WORDS_B = _DATA["KEY_WORDS_B"]
ARCHIVE_NOUNS = _DATA["ARCHIVE_NOUNS"]


def random_key(rng: random.Random) -> str:
    """A RULER-style key: two random words joined by a hyphen (``"brisk-falcon"``)."""
    return f"{rng.choice(KEY_WORDS_A)}-{rng.choice(KEY_WORDS_B)}"


def random_code(rng: random.Random, n: int = 6) -> str:
    """``n`` upper-case letters and digits with at least two of each (``"K7Q2ZD"``)."""
    while True:
        code = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))
        if sum(c.isdigit() for c in code) >= 2 and sum(c.isalpha() for c in code) >= 2:
            return code


def random_var(rng: random.Random) -> str:
    """A RULER-style variable name: five random upper-case letters."""
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


# --------------------------------------------------------------------------------------
# Service log
# --------------------------------------------------------------------------------------

SERVICES = _DATA["SERVICES"]


@dataclass(frozen=True)
class Incident:
    """One kind of anomalous log event.

    ``phrase`` is what identifies it (never in a routine line, case-insensitive), ``line`` the
    message template (``{svc}`` and the detail fields), ``question`` names the incident but
    not the service.
    """

    kind: str
    phrase: str
    level: str
    line: str
    question: str


INCIDENTS: tuple[Incident, ...] = (
    Incident(
        "disk_failure",
        "disk failure",
        "ERROR",
        "disk failure on /dev/{dev}: I/O error, device offline",
        "Which service reported the disk failure?",
    ),
    Incident(
        "oom_kill",
        "OOM killer",
        "ERROR",
        "worker pid={pid} killed by the OOM killer (memory limit {mem}Mi exceeded)",
        "Which service had a worker killed by the OOM killer?",
    ),
    Incident(
        "cert_expired",
        "certificate expired",
        "ERROR",
        "TLS handshake with {host} failed: certificate expired",
        "Which service reported an expired TLS certificate?",
    ),
    Incident(
        "replication_lag",
        "replication lag",
        "WARN",
        "replication lag of {lag}s on replica {replica} exceeds the 30s threshold",
        "Which service reported replication lag above its threshold?",
    ),
    Incident(
        "gateway_timeout",
        "payment gateway timeout",
        "ERROR",
        "payment gateway timeout after {ms} ms (txn=txn_{hex})",
        "Which service reported a payment gateway timeout?",
    ),
    Incident(
        "segfault",
        "segmentation fault",
        "FATAL",
        "process {pid} terminated by signal SIGSEGV (segmentation fault)",
        "Which service crashed with a segmentation fault?",
    ),
    Incident(
        "corruption",
        "data corruption",
        "ERROR",
        "checksum mismatch in block {block}: data corruption detected",
        "Which service detected data corruption?",
    ),
    Incident(
        "disk_full",
        "no space left on device",
        "ERROR",
        "write to /var/lib/{svc}/{file} failed: no space left on device",
        "Which service ran out of disk space?",
    ),
    Incident(
        "deadlock",
        "deadlock",
        "ERROR",
        "deadlock detected between transactions tx_{hex} and tx_{hex2}, rolled back",
        "Which service detected a database deadlock?",
    ),
    Incident(
        "pool_exhausted",
        "connection pool exhausted",
        "ERROR",
        "database connection pool exhausted ({mem}/{mem} in use), requests queued",
        "Which service exhausted its database connection pool?",
    ),
    Incident(
        "split_brain",
        "split brain",
        "FATAL",
        "cluster quorum lost: split brain detected between nodes {node} and {node2}",
        "Which service reported a split brain in its cluster?",
    ),
    Incident(
        "dns_failure",
        "DNS resolution failed",
        "ERROR",
        "DNS resolution failed for {host}: SERVFAIL",
        "Which service had DNS resolution failures?",
    ),
)

_HOSTS = _DATA["_HOSTS"]
_DEVICES = ("sda", "sdb", "sdc", "sdd", "nvme0n1", "nvme1n1", "xvdf", "vdb")
_METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH")
_PATHS = _DATA["_PATHS"]
_STATUS = (200, 200, 200, 200, 200, 200, 201, 204, 304, 400, 401, 404, 429)
_WORDS = ("lamp", "chair", "boots", "tent", "kettle", "socks", "desk", "camera", "bike", "rug")
_JOBS = ("send_email", "resize_image", "sync_account", "rebuild_index", "export_csv", "charge_card", "webhook")
_CRONS = ("nightly-backup", "cleanup-sessions", "rotate-logs", "refresh-rates", "weekly-digest", "reindex-catalog")
_PLANS = ("free", "starter", "pro", "team", "enterprise")
_FIELDS = ("email", "name", "address", "phone", "currency", "quantity", "sku")

# (level, template) per service; fields are filled by _log_fields.
_ROUTINE = _DATA["_ROUTINE"]
_GENERIC = _DATA["_GENERIC"]
# Busy services log more: relative weights of SERVICES.
_SERVICE_WEIGHTS = (10, 6, 3, 5, 4, 4, 3, 2, 1, 2, 2, 1, 3, 1, 2, 2)


def _hex(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _log_fields(fields: Sequence[str], svc: str, rng: random.Random) -> dict[str, str]:
    v: dict[str, str] = {}
    for f in fields:
        if f in v:
            continue
        if f == "rid":
            v[f] = _hex(rng)
        elif f in ("hex", "hex2"):
            v[f] = _hex(rng, 10)
        elif f == "method":
            v[f] = rng.choice(_METHODS)
        elif f == "path":
            v[f] = rng.choice(_PATHS).format(n=rng.randint(1, 99999), word=rng.choice(_WORDS))
        elif f == "status":
            v[f] = str(rng.choice(_STATUS))
        elif f == "ms":
            v[f] = str(int(rng.expovariate(1 / 40)) + 1)
        elif f == "slow":
            v[f] = str(rng.randint(1500, 9000))
        elif f == "try":
            v[f] = str(rng.randint(1, 3))
        elif f in ("k", "k2"):
            v[f] = str(rng.randint(1, 9))
        elif f in ("n", "n2"):
            v[f] = str(rng.randint(1000, 99999))
        elif f == "n3":
            v[f] = str(rng.randint(10, 999))
        elif f == "ip":
            v[f] = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        elif f == "ver":
            v[f] = f"{rng.randint(1, 9)}.{rng.randint(0, 30)}"
        elif f == "svc2":
            v[f] = rng.choice(SERVICES)
        elif f == "user":
            v[f] = f"u_{rng.randint(1000, 99999)}"
        elif f == "bool":
            v[f] = rng.choice(("true", "false"))
        elif f == "amt":
            v[f] = f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
        elif f == "cur":
            v[f] = rng.choice(("EUR", "USD", "GBP"))
        elif f == "plan":
            v[f] = rng.choice(_PLANS)
        elif f == "bucket":
            v[f] = rng.choice(("uploads", "backups", "avatars", "exports"))
        elif f == "size":
            v[f] = str(rng.randint(200, 9_000_000))
        elif f == "pct":
            v[f] = str(rng.randint(20, 97))
        elif f == "dev":
            v[f] = rng.choice(_DEVICES)
        elif f == "replica":
            v[f] = f"db-{rng.randint(1, 6)}"
        elif f == "job":
            v[f] = rng.choice(_JOBS)
        elif f == "platform":
            v[f] = rng.choice(("ios", "android", "web"))
        elif f == "cron":
            v[f] = rng.choice(_CRONS)
        elif f == "domain":
            v[f] = rng.choice(("example.com", "mail.example.org", "corp.example.net"))
        elif f == "src":
            v[f] = rng.choice(("clickstream", "orders-cdc", "mobile-events", "partner-feed"))
        elif f == "fmt":
            v[f] = rng.choice(("pdf", "csv", "xlsx"))
        elif f == "field":
            v[f] = rng.choice(_FIELDS)
        elif f in ("w", "h"):
            v[f] = str(rng.choice((64, 128, 256, 512, 1024)))
        elif f == "host":
            v[f] = rng.choice(_HOSTS)
        elif f == "pid":
            v[f] = str(rng.randint(300, 65000))
        elif f == "mem":
            v[f] = str(rng.choice((128, 256, 512, 1024, 2048)))
        elif f == "lag":
            v[f] = str(rng.randint(45, 900))
        elif f == "block":
            v[f] = str(rng.randint(10_000, 9_999_999))
        elif f == "file":
            v[f] = f"{rng.choice(('wal', 'data', 'tmp', 'segment'))}-{rng.randint(1, 999):04d}.bin"
        elif f in ("node", "node2"):
            v[f] = f"{svc}-{rng.randint(0, 5)}"
        elif f == "svc":
            v[f] = svc
        else:  # pragma: no cover - a template typo
            raise KeyError(f)
    return v


_PARSED_ROUTINE = {
    svc: tuple((lvl, t, tuple(_FIELD_RE.findall(t))) for lvl, t in templates) for svc, templates in _ROUTINE.items()
}
_PARSED_GENERIC = tuple((lvl, t, tuple(_FIELD_RE.findall(t))) for lvl, t in _GENERIC)

LOG_EPOCH = datetime(2024, 5, 14, 0, 0, 0)
"""Day the synthetic logs start on; the time of day is drawn from the seed."""


def format_log_line(t_ms: int, level: str, service: str, message: str) -> str:
    """``2024-05-14T09:26:53.412Z INFO  [api] message`` (``t_ms`` counted from :data:`LOG_EPOCH`)."""
    ts = (LOG_EPOCH + timedelta(milliseconds=t_ms)).isoformat(timespec="milliseconds")
    return f"{ts}Z {level:<5} [{service}] {message}"


def parse_log_time(line: str) -> int:
    """Milliseconds since :data:`LOG_EPOCH` of a line written by :func:`format_log_line`."""
    ts = datetime.fromisoformat(line[:23])
    return (ts - LOG_EPOCH) // timedelta(milliseconds=1)


def log_units(rng: random.Random) -> Iterator[str]:
    """Endless routine service log, one line (ending in ``"\\n"``) per unit.

    Timestamps rise by at least 2 ms a line (so an injected line fits between two), in
    bursts and lulls; most lines are routine INFO/DEBUG traffic with a few ordinary WARN and
    ERROR lines. No line contains an :data:`INCIDENTS` phrase.
    """
    t = rng.randint(0, 6 * 3600 * 1000)
    services = SERVICES
    weights = _SERVICE_WEIGHTS
    while True:
        t += 2 + int(rng.expovariate(1 / 150))
        svc = rng.choices(services, weights)[0]
        if rng.random() < 0.15:
            level, template, fields = rng.choice(_PARSED_GENERIC)
        else:
            level, template, fields = rng.choice(_PARSED_ROUTINE[svc])
        msg = template.format(**_log_fields(fields, svc, rng))
        yield format_log_line(t, level, svc, msg) + "\n"


def incident_message(incident: Incident, service: str, rng: random.Random) -> str:
    """The message part of an incident line for ``service`` (details drawn from ``rng``)."""
    fields = _FIELD_RE.findall(incident.line)
    return incident.line.format(**_log_fields(fields, service, rng))


# --------------------------------------------------------------------------------------
# Service log with injected incidents (the monitoring benchmark)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectedIncident:
    """One occurrence of an incident in a generated log: the lines (1-based) it wrote.

    ``watched`` incidents are the ones a monitor is asked about (``incident.question``); the
    others are distractors: anomalies nobody asked about.
    """

    incident: Incident
    service: str
    lines: tuple[int, ...]
    watched: bool


@dataclass(frozen=True)
class IncidentLog:
    """A routine service log with incidents injected at known lines."""

    lines: list[str]
    incidents: list[InjectedIncident]

    @property
    def text(self) -> str:
        return "".join(self.lines)

    @property
    def questions(self) -> list[str]:
        """The watched incidents' questions, each once, in order of first occurrence."""
        return list(dict.fromkeys(i.incident.question for i in self.incidents if i.watched))


def incident_log(
    rng: random.Random,
    n_lines: int,
    *,
    watched: int = 6,
    repeats: int = 2,
    distractors: int = 3,
    burst: tuple[int, int] = (1, 3),
    spacing: int = 6,
    start: float = 0.1,
    min_gap: int = 40,
) -> IncidentLog:
    """``n_lines`` routine lines (:func:`log_units`) with incidents injected between them.

    ``watched`` incident kinds (distinct, drawn from :data:`INCIDENTS`) occur ``repeats``
    times each and ``distractors`` other kinds once each. An occurrence is a burst of
    ``burst[0]..burst[1]`` lines of one service, each 1..``spacing`` routine lines after the
    previous one, starting after the first ``start`` fraction of the log; bursts start at
    least ``min_gap`` routine lines apart. An injected line's timestamp is 1 ms after the line
    before it, so timestamps keep rising. Deterministic for a given ``rng`` state.
    """
    if watched + distractors > len(INCIDENTS):
        raise ValueError(f"only {len(INCIDENTS)} incident kinds exist, asked for {watched + distractors}")
    if not 1 <= burst[0] <= burst[1] or spacing < 1 or not 0.0 <= start < 1.0 or repeats < 1:
        raise ValueError("need 1 <= burst[0] <= burst[1], spacing >= 1, 0 <= start < 1 and repeats >= 1")
    units = log_units(random.Random(rng.getrandbits(64)))
    routine = [next(units) for _ in range(n_lines)]
    kinds = rng.sample(INCIDENTS, watched + distractors)
    plan = [(kind, True) for kind in kinds[:watched] for _ in range(repeats)]
    plan += [(kind, False) for kind in kinds[watched:]]
    rng.shuffle(plan)
    lo = int(start * n_lines)
    hi = n_lines - 1 - spacing * (burst[1] - 1)
    gap = max(min_gap, spacing * burst[1] + 1)
    if hi - lo < gap * len(plan):
        raise ValueError(f"{n_lines} lines are too few for {len(plan)} incidents {gap} lines apart")
    # anchors at least `gap` apart: spread len(plan) gaps, then distribute the slack at random
    slack = hi - lo - gap * (len(plan) - 1)
    cuts = sorted(rng.randint(0, slack) for _ in plan)
    anchors = [lo + c + gap * i for i, c in enumerate(cuts)]
    after: dict[int, tuple[int, str, str, str]] = {}  # routine index -> (plan index, level, service, message)
    services: list[str] = []
    for k, ((kind, _), anchor) in enumerate(zip(plan, anchors)):
        service = rng.choice(SERVICES)
        services.append(service)
        pos = anchor
        for _ in range(rng.randint(*burst)):
            after[pos] = (k, kind.level, service, incident_message(kind, service, rng))
            pos += rng.randint(1, spacing)
    out: list[str] = []
    written: list[list[int]] = [[] for _ in plan]
    for i, line in enumerate(routine):
        out.append(line)
        if i in after:
            k, level, service, message = after[i]
            out.append(format_log_line(parse_log_time(line) + 1, level, service, message) + "\n")
            written[k].append(len(out))
    incidents = [
        InjectedIncident(incident=kind, service=service, lines=tuple(lines), watched=is_watched)
        for (kind, is_watched), service, lines in zip(plan, services, written)
    ]
    incidents.sort(key=lambda inc: inc.lines[0])
    return IncidentLog(lines=out, incidents=incidents)
