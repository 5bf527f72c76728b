"""The examples run as documented (on the tiny model: `--model DIR`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return str(tiny_model_dir)


def test_watch_log(model) -> None:
    out = run("watch_log.py", "--model", model, "--lines", "200", "--threshold=-1e30", "--warmup", "0", "--no-lexical")
    assert "watching a generated log of 2" in out and "injected incidents:" in out
    assert "ALERT 'Which service" in out  # an absolute threshold under every score: everything alerts
    assert "alert(s) over" in out and "tokens," in out


def test_watch_log_on_a_file(model, tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(f"2024-05-01T12:00:{i:02d}Z INFO [api] GET /health 200\n" for i in range(30)))
    out = run("watch_log.py", "--model", model, "--path", str(log), "-q", "Which service failed?", "--warmup", "4")
    assert f"watching {log}" in out and "'Which service failed?': " in out


def test_agent_tool(model) -> None:
    out = run("agent_tool.py", "--model", model, "--sentences", "40")
    assert "tools offered to the LLM: remember, recall" in out
    assert ">>> remember(" in out and ">>> recall(" in out
    assert "source {" in out and "answer:" in out


def test_chat_assistant_demo(model) -> None:
    out = run("chat_assistant.py", "--model", model, "--demo", "--turns", "10")
    assert "history: 22 messages" in out
    assert "user: What is my locker code?" in out and "assistant:" in out
    assert "[recent]" in out or "[turn " in out


def test_chat_assistant_reads_stdin(model) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "chat_assistant.py"), "--model", model],
        input="hello\nmy code is 12\n\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("assistant:") == 2
