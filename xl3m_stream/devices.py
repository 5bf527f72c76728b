"""Model replicas: one scorer (and reader) per configured device, and which one to use next.

The pool is plain code: it loads replicas, tracks the work each has in flight and picks the
least loaded. The engine owns the concurrency (worker threads, per-replica capacity limits).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import catalog
from .config import EngineConfig
from .embedding import Embedder, embedder_dir
from .errors import ConfigError
from .inference import Reader
from .models import LoadedModel, load
from .remote import RemoteReader, resolve_endpoint
from .scoring import Scorer

log = logging.getLogger("xl3m_stream.devices")


@dataclass
class Replica:
    """The models on one device and its bookkeeping."""

    index: int
    device: Any  # torch.device
    scorer: Scorer
    reader: Reader | RemoteReader
    """Writes the answers: a local :class:`Reader`, or the :class:`RemoteReader` every replica shares."""
    scoring_model: LoadedModel
    reader_model: LoadedModel
    """The reader's model; for a remote reader, its name (``openai:MODEL``) and window, no weights."""
    embedder: Embedder | None = None
    """The dense relevance signal's embedder on this device (None: ``dense`` is off)."""
    inflight: int = 0
    batches: int = 0
    failures: int = 0


def expand_devices(devices: Sequence[str]) -> list[str]:
    """Turn ``"auto"`` into every CUDA device (else the CPU); check the devices exist."""
    import torch

    out: list[str] = []
    for dev in devices:
        if dev == "auto":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            out.extend([f"cuda:{i}" for i in range(n)] or ["cpu"])
        elif dev == "cuda":
            out.append("cuda:0")
        else:
            out.append(dev)
    for dev in out:
        if dev.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(f"devices: {dev} asked for, but CUDA is not available here")
            index = int(dev.split(":")[1])
            if index >= torch.cuda.device_count():
                raise ConfigError(
                    f"devices: {dev} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
                )
        if dev == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("devices: mps asked for, but it is not available here")
    if len(set(out)) != len(out):
        raise ConfigError(f"devices: {list(devices)} names a device twice once 'auto' is expanded")
    return out


class DevicePool:
    """One :class:`Replica` per device."""

    def __init__(self, replicas: list[Replica]) -> None:
        if not replicas:
            raise ValueError("a device pool needs at least one replica")
        self.replicas = replicas

    @classmethod
    def load(cls, config: EngineConfig) -> DevicePool:
        """Load the scoring model (and the reader, if it is another model) on every device."""
        import torch

        reader = reader_spec(config)
        remote_spec = catalog.remote_name(reader)
        if remote_spec is not None:
            resolve_endpoint(config)  # a bad $OPENAI_BASE_URL fails now, not after loading the models
        remote: RemoteReader | None = None
        replicas = []
        try:
            for i, name in enumerate(expand_devices(config.devices)):
                device = torch.device(name)
                scoring = load(
                    config.model,
                    device,
                    dtype=config.dtype,
                    trust_remote_code=config.trust_remote_code,
                    allow_download=config.allow_download,
                )
                if remote_spec is not None:  # served elsewhere: one client, shared by the replicas
                    remote = remote or RemoteReader.from_config(config, scoring.tokenizer)
                    reading = LoadedModel(remote.name, None, None, None, None, remote.window)
                    replicas.append(_replica(i, scoring, reading, config, remote))
                    continue
                if reader is None:
                    reading = scoring
                else:
                    reading = load(
                        reader,
                        device,
                        dtype=config.dtype,
                        trust_remote_code=config.trust_remote_code,
                        allow_download=config.allow_download,
                    )
                replicas.append(_replica(i, scoring, reading, config))
        except BaseException:
            if remote is not None:
                remote.close()
            raise
        return cls(replicas)

    @classmethod
    def from_models(cls, models: Sequence[LoadedModel], config: EngineConfig) -> DevicePool:
        """One replica per model you already loaded (each on its own device); it also reads."""
        if not models:
            raise ConfigError("from_models needs at least one model")
        return cls([_replica(i, m, m, config) for i, m in enumerate(models)])

    def pick(self, exclude: Sequence[int] = ()) -> Replica | None:
        """The replica with the least work in flight (ties: lowest index) that is not excluded
        (the caller's failed ones), or None."""
        candidates = [r for r in self.replicas if r.index not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (r.inflight, r.index))

    @property
    def first(self) -> Replica:
        return self.replicas[0]

    def close(self) -> None:
        """Drop the models so their memory can be freed."""
        import gc

        import torch

        for reader in {id(r.reader): r.reader for r in self.replicas}.values():
            if isinstance(reader, RemoteReader):
                reader.close()  # its HTTP connections
        self.replicas.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def reader_spec(config: EngineConfig) -> str | None:
    """The model that reads for ``config``, or None when the scoring model reads itself
    (``"openai:MODEL"``, as given, for a served model: :mod:`xl3m_stream.remote`)."""
    spec = config.reader_model
    if spec == "auto":
        scorer = catalog.find(config.model)
        return catalog.DEFAULT_READER.alias if scorer is not None and scorer is not catalog.DEFAULT_READER else None
    if spec is None or spec.strip() == config.model.strip():
        return None
    if catalog.remote_name(spec) is not None:
        return spec.strip()
    found, model = catalog.find(spec), catalog.find(config.model)
    return None if found is not None and found is model else spec


def _replica(
    index: int, scoring: LoadedModel, reading: LoadedModel, config: EngineConfig, remote: RemoteReader | None = None
) -> Replica:
    window = config.reader_window or reading.window
    compiled = _maybe_compile(scoring, config)
    scorer = Scorer(
        scoring.model,
        scoring.tokenizer,
        tgain_top=config.tgain_top,
        pad_to_segment=config.segment_tokens if compiled is not None else None,
        pad_rows=config.batch_size if compiled is not None else None,
        compiled=compiled,
    )
    try:
        reader = remote or Reader(
            reading.model,
            reading.tokenizer,
            window=window,
            prompt_style=config.reader_prompt,
            answer_style=config.answer_style,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # the embedder runs in the scorer's dtype: the one chosen as fast for this device
    embedder = None
    if "dense" in config.relevance:
        where = embedder_dir(config.embedder)
        embedder = Embedder(where, device=str(scoring.device), dtype=scoring.dtype).load()
    log.info("replica %d on %s: %s (%s)", index, scoring.device, scoring.name, scoring.dtype)
    return Replica(index, scoring.device, scorer, reader, scoring, reading, embedder=embedder)


def _maybe_compile(loaded: LoadedModel, config: EngineConfig) -> Any:
    """``torch.compile`` the scoring model with static shapes when asked (or "auto" on CUDA)."""
    import torch

    if config.compile == "never" or (config.compile == "auto" and loaded.device.type != "cuda"):
        return None
    return torch.compile(loaded.model, dynamic=False)
