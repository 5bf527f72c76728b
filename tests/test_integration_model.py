"""Integration tests on the real models: the proof.

The scorer is the default SmolLM2-135M-Instruct (8,192-token window); the passkey samples
stream 8x its window through the engine and read with it, the real-text samples (GNU manuals,
this machine's package logs) read with the default reader Qwen2.5-Coder-1.5B or Gemma-3-270M.
Each is one fixed sample: the rates over many samples are the evaluation's
(docs/RESULTS.md). They take minutes on a CPU; skip them with ``-m "not model"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest

from xl3m_stream import Engine, EngineConfig
from xl3m_stream.errors import ModelLoadError
from xl3m_stream.evaluate.metrics import first_int_match
from xl3m_stream.evaluate.tasks import make_sample

pytestmark = pytest.mark.model

WINDOW = 8192
LENGTH = 8 * WINDOW + 500  # a little over 8x the window


@pytest.fixture(scope="module")
def tokenizer():
    import torch

    from xl3m_stream import models

    try:
        return models.load("default", torch.device("cpu")).tokenizer
    except ModelLoadError as exc:
        pytest.skip(f"default model not installed: {exc}")


def _count(tokenizer):
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(("seed", "depth"), [(11, 0.15), (12, 0.6)])
def test_passkey_at_8x_window_through_engine(tokenizer, seed: int, depth: float) -> None:
    sample = make_sample("passkey", length=LENGTH, seed=seed, depth=depth, count_tokens=_count(tokenizer))
    # read with the scoring model itself: the stream is 8x the window of the model that reads
    config = EngineConfig(question=sample.question, reader_model=None)

    async def run():
        async with Engine(config) as engine:
            assert engine.reader_window == WINDOW
            step = 1 << 15
            await engine.process(sample.context[i : i + step] for i in range(0, len(sample.context), step))
            assert engine.stream_tokens >= 8 * WINDOW
            return await engine.ask(sample.question)

    answer = anyio.run(run)
    key = sample.answers[0]
    selected = "".join(s.text for s in answer.segments)
    assert key in selected, "the needle segment must be in the key context"
    assert first_int_match(answer.text, key), f"answered {answer.text!r}, expected {key}"


def test_cli_ask_prints_the_key(tokenizer, tmp_path) -> None:
    sample = make_sample("passkey", length=LENGTH, seed=13, depth=0.9, count_tokens=_count(tokenizer))
    path = tmp_path / "passkey.txt"
    path.write_text(sample.context, encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "xl3m_stream.cli", "ask", str(path), "--question", sample.question, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert set(result) >= {"answer", "question", "segments", "stream_tokens", "seconds"}
    assert result["stream_tokens"] >= 8 * WINDOW
    assert result["question"] == sample.question
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts)
    assert all({"start", "end", "score", "text"} <= set(s) for s in result["segments"])
    assert first_int_match(result["answer"], sample.answers[0]), result["answer"]
    assert any(sample.answers[0] in s["text"] for s in result["segments"])


def _real_sample(tokenizer, task: str, seed: int, length: int):
    from xl3m_stream.evaluate import realtext

    try:
        realtext.default_corpus("log" if task == "log-real" else "prose")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return make_sample(task, length=length, seed=seed, depth=0.6, count_tokens=_count(tokenizer))


def _cli_ask(path, question: str, *extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "xl3m_stream.cli", "ask", str(path), "--question", question, "--json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_paraphrased_question_over_a_real_manual_is_answered(tokenizer, tmp_path) -> None:
    """Real GNU manual text, a question sharing no content word with its evidence: the fused
    relevance selects it and the default reader (another tokenizer) answers the code."""
    sample = _real_sample(tokenizer, "prose-paraphrase", seed=1, length=2 * WINDOW)
    path = tmp_path / "manual.txt"
    path.write_text(sample.context, encoding="utf-8")
    result = _cli_ask(path, sample.question)
    assert any(sample.answers[0] in s["text"] for s in result["segments"]), "evidence must be selected"
    assert sample.answers[0] in result["answer"], result["answer"]


def test_natural_question_over_a_real_package_log_is_answered(tokenizer, tmp_path) -> None:
    sample = _real_sample(tokenizer, "log-real", seed=1, length=2 * WINDOW)
    path = tmp_path / "dpkg.log"
    path.write_text(sample.context, encoding="utf-8")
    result = _cli_ask(path, sample.question)
    assert sample.answers[0] in result["answer"], result["answer"]


def test_another_reader_family_answers_from_the_key_context(tokenizer, tmp_path) -> None:
    """`--reader-model gemma-3-270m`: Gemma's tokenizer reads the text SmolLM2 selected."""
    sample = _real_sample(tokenizer, "prose-lexical", seed=3, length=2 * WINDOW)
    path = tmp_path / "manual.txt"
    path.write_text(sample.context, encoding="utf-8")
    result = _cli_ask(path, sample.question, "--model", "default", "--reader-model", "gemma-3-270m")
    assert sample.answers[0] in result["answer"], result["answer"]
