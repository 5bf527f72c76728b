"""Crash safety: a process ingesting into a state directory is killed with SIGKILL at random points.

Each round starts ``tests/crash_driver.py`` on the same state directory; the driver prints
``ack <chars>`` after every ``feed`` that returned and resumes where the restored state stops.
After every kill the log is read back (without a model) and compared with a reference built
from the acknowledged text alone: every acknowledged token and every segment cut from it must
be there, unchanged, and nothing may be duplicated. The last round runs to the end; then the
whole stream must equal the reference, every segment must have been scored, and ``ask``
must answer from the state alone.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from crash_driver import config as driver_config
from transformers import AutoTokenizer

from xl3m_stream.cli import main as cli_main
from xl3m_stream.persistence import read_snapshot, read_stream
from xl3m_stream.segmenter import Segmenter
from xl3m_stream.tokenizer import IncrementalTokenizer

DRIVER = Path(__file__).with_name("crash_driver.py")
KILL_ROUNDS = 6
POLICIES = ["interval", "always", "never"]
SEED = 20240526


def make_text(rng: random.Random, lines: int = 120) -> str:
    words = ["grass", "green", "sky", "blue", "sun", "yellow", "café", "naïve", "日本", "disk", "api", "ok"]
    out = []
    for i in range(lines):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        out.append(f"{i:04d} INFO svc{rng.randint(1, 5)} {body}.\n")
    out.insert(lines // 2, "0000 ERROR storage The pass key is 12345.\n")
    return "".join(out)


def reference(tokenizer, text: str, *, final: bool) -> tuple[list[int], list[tuple]]:
    """Token ids and segments the engine must hold once ``text`` was acknowledged."""
    itok = IncrementalTokenizer(tokenizer)
    segmenter = Segmenter.for_config(driver_config("m", "s", "never"), tokenizer)  # the driver's layout
    ids = itok.push(text) + (itok.flush() if final else [])
    segments = segmenter.push(ids) + (segmenter.flush() if final else [])
    return ids, [(s.seq, s.start, s.end, s.tokens) for s in segments]


class Driver:
    """One driver process, its stdout read by a thread (so a hung driver cannot hang the test)."""

    def __init__(
        self, model: Path, state: Path, text_file: Path, seed: int, fsync: str, limit: int | None = None
    ) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), str(model), str(state), str(text_file), str(seed), fsync]
            + ([str(limit)] if limit is not None else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.last_ack = -1
        self.acks = 0
        self.started: list[int] | None = None
        self.done = False
        self.idle = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _take(self, line: str) -> None:
        kind, _, rest = line.strip().partition(" ")
        if kind == "ack":
            self.last_ack = int(rest)
            self.acks += 1
        elif kind == "start":
            self.started = [int(x) for x in rest.split()]
        elif kind == "done":
            self.done = True
        elif kind == "idle":
            self.idle = True

    def wait_for(self, predicate, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"driver silent for {timeout} s: {self._stderr()}") from None
            if line is None:
                raise AssertionError(f"driver exited ({self.proc.wait()}): {self._stderr()}")
            self._take(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        while (line := self.lines.get(timeout=10)) is not None:  # acks written before the kill count
            self._take(line)

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-3000:]


def check_state(tokenizer, state: Path, text: str, acked: int, *, final: bool = False) -> dict[str, int]:
    """Everything acknowledged is in the log, unchanged and once; returns what was checked."""
    got = read_stream(state)
    assert got.chars >= acked, f"the state holds {got.chars} characters, {acked} were acknowledged"
    assert tokenizer.decode(got.ids) + got.pending_text == text[: got.chars], "stream text differs"
    ref_ids, ref_segments = reference(tokenizer, text[: got.chars] if final else text[:acked], final=final)
    if not final:
        # the engine was fed in pieces, and its tokenizer may still hold the last characters as
        # pending text (saved, checked above), where one-shot tokenizing emitted their tokens
        ref_ids = ref_ids[: len(got.ids)]
        ref_segments = [s for s in ref_segments if s[2] <= len(got.ids)]
    assert got.ids[: len(ref_ids)] == ref_ids
    held = [(s.seq, s.start, s.end, s.tokens) for s in got.segments]
    lost = sum(1 for want, have in zip(ref_segments, held + [None] * len(ref_segments)) if want != have)
    if final:
        assert held == ref_segments
    torn = int(got.torn is not None)
    return {"acked_tokens": len(ref_ids), "acked_segments": len(ref_segments), "lost": lost, "torn": torn}


def test_sigkill_at_random_points_loses_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    rng = random.Random(SEED)
    text = make_text(rng)
    text_file = tmp_path / "stream.txt"
    text_file.write_text(text, encoding="utf-8")
    state = tmp_path / "state"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    figures: dict = {"kill_rounds": 0, "acked_segments_checked": 0, "segments_lost": 0, "torn_tails_seen": 0}
    rounds = []

    for r in range(KILL_ROUNDS):
        # each round may feed up to here (then it idles until killed): every kill lands mid-stream
        limit = len(text) * (r + 1) // (KILL_ROUNDS + 1)
        driver = Driver(tiny_model_dir, state, text_file, seed=r, fsync=POLICIES[r % len(POLICIES)], limit=limit)
        if r == 2:  # kill while it restores and re-scores, before it takes much new
            driver.wait_for(lambda d=driver: d.started is not None)
        else:
            acks = rng.randint(1, 15)
            driver.wait_for(lambda d=driver, n=acks: d.acks >= n or d.idle)
        time.sleep(rng.uniform(0, 0.08))
        driver.kill()
        assert not driver.done
        checked = check_state(tokenizer, state, text, max(driver.last_ack, 0))
        figures["kill_rounds"] += 1
        figures["acked_segments_checked"] += checked["acked_segments"]
        figures["segments_lost"] += checked["lost"]
        figures["torn_tails_seen"] += checked["torn"]
        policy = POLICIES[r % len(POLICIES)]
        rounds.append({"fsync": policy, "restored": driver.started, "acked": driver.last_ack, "idle": driver.idle})
        assert checked["lost"] == 0

    driver = Driver(tiny_model_dir, state, text_file, seed=99, fsync="interval")
    driver.wait_for(lambda: driver.done, timeout=300)
    assert driver.proc.wait(timeout=60) == 0
    final = check_state(tokenizer, state, text, len(text), final=True)
    assert final["lost"] == 0

    snap = read_snapshot(state)  # the last run's final snapshot
    assert snap is not None
    _, ref_segments = reference(tokenizer, text, final=True)
    assert snap.unscored == [], "every segment was scored before the last run ended"
    tokens = snap.position
    assert tokens == final["acked_tokens"]
    entries = [(e.segment.seq, e.segment.start, e.segment.end, e.segment.tokens) for e in snap.store.entries]
    assert entries and set(entries) <= set(ref_segments)

    out = tmp_path / "answer.json"
    rc = _run_cli(
        ["ask", "--state-dir", str(state), "-q", "What is the pass key?", "--json", "--model", str(tiny_model_dir)],
        out,
    )
    assert rc == 0
    answer = json.loads(out.read_text())
    assert isinstance(answer["answer"], str) and answer["segments"]
    assert answer["stream_tokens"] == tokens
    figures.update(
        final_tokens=tokens, final_segments=final["acked_segments"], seconds=round(time.perf_counter() - started, 1)
    )
    print("crash figures:", json.dumps(figures), "rounds:", json.dumps(rounds))
    assert figures["segments_lost"] == 0 and figures["kill_rounds"] == KILL_ROUNDS


def _run_cli(argv: list[str], out: Path) -> int:
    """Run the CLI in this process with stdout captured to ``out``."""
    import contextlib

    with out.open("w") as f, contextlib.redirect_stdout(f):
        return cli_main(argv)
