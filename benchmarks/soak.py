"""Soak: SIGKILL at random points while a stream is ingested into a state directory, many rounds.

    python benchmarks/soak.py [--rounds 100] [--mode ingest|api] [--model tiny|DIR|ALIAS] [--json]

Each round starts a process on the same state directory, kills it with SIGKILL after a random
delay (fsync policies ``always``, ``interval``, ``never`` in turn) and reads the state back
without a model. After the last round one more run goes to the end and must leave the whole input
in the state exactly once.

``--mode ingest`` (default) runs the real command, ``xl3m-stream ingest FILE --state-dir DIR``,
on a log file that grows by a block of lines every round: each run must resume the file where
the state stops (after a kill) or take only what was appended (after a run that finished). The
state's text must always be a prefix of the file (no character altered or duplicated), every
segment must hold exactly the stream's tokens at its offsets, and no segment seen in the state
after an earlier round may be missing or changed later (lost); a run that exits on its own must
leave the whole file in the state.

``--mode api`` runs an engine on the state directory that prints ``ack <chars>`` after every
``feed`` that returned (as tests/crash_driver.py does) and resumes at the characters the state
holds: after each kill everything acknowledged must be in the log, and every segment a reference
segmentation of the acknowledged text yields must be there, identical.

Counted: kill rounds, runs that finished before their kill, acknowledged segments checked
(cumulative over the rounds), segments lost (target 0), tokens altered or duplicated (target 0),
torn log tails seen and cut. The default model is the tiny random model of the test suite
(built in a temporary directory), so 100 rounds take minutes on 2 cores; each process still
loads torch (about 3 s of every round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

from common import emit, now

ROOT = Path(__file__).resolve().parent.parent
"""The checkout this script is in: the package every child process runs."""

POLICIES = ("always", "interval", "never")
SEGMENT_TOKENS = 32
WORDS = ["grass", "green", "sky", "blue", "sun", "yellow", "café", "naïve", "日本", "disk", "api", "ok", "error"]


def block(rng: random.Random, start: int, lines: int) -> str:
    """Log lines numbered from ``start`` (a key line in some blocks)."""
    out = []
    for i in range(start, start + lines):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        out.append(f"{i:06d} INFO svc{rng.randint(1, 5)} {body}.\n")
    if rng.random() < 0.2:
        out.insert(rng.randrange(len(out)), f"{start:06d} ERROR storage The pass key is {rng.randint(10000, 99999)}.\n")
    return "".join(out)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Child:
    """A child process whose stdout lines are read by a thread (a hung child cannot hang the soak)."""

    def __init__(self, argv: list[str]) -> None:
        path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = dict(
            os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", PYTHONPATH=path
        )
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, done: Any, timeout: float = 300.0) -> list[str]:
        """The lines read until ``done(lines so far)`` holds (raises if the child ends first)."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise SystemExit(f"the child ended ({self.proc.wait()}): {''.join(self.stderr)[-2000:]}")
            out.append(line)
            if done(out):
                return out

    def kill_after(self, delay: float) -> bool:
        """SIGKILL after ``delay`` s unless it exited first; returns whether it was killed."""
        try:
            self.proc.wait(timeout=delay)
            return False
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            return True

    def output(self) -> list[str]:
        out = []
        while True:
            try:
                line = self.lines.get(timeout=10)
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        return out


# ------------------------------------------------------------------------------- checks


class Checker:
    """Reads the state after a round and counts what was lost, altered or duplicated."""

    def __init__(self, tokenizer: Any, state: Path) -> None:
        self.tokenizer = tokenizer
        self.state = state
        self.seen: dict[int, tuple] = {}  # every segment seen in the state after a round, by seq
        self.figures = {"acked_segments_checked": 0, "segments_lost": 0, "tokens_altered_or_duplicated": 0}
        self.figures["torn_tails_seen"] = 0

    def read(self) -> Any:
        from xl3m_stream.persistence import read_stream

        if not (self.state / "meta.json").exists():
            return None
        return read_stream(self.state)

    def bad_tokens(self, text: str, expected: str) -> int:
        """Tokens of ``text`` (the state's) after the first character that differs from ``expected``."""
        same = 0
        for a, b in zip(text, expected):
            if a != b:
                break
            same += 1
        if same == len(text):
            return 0
        return max(1, len(self.tokenizer.encode(text[same:], add_special_tokens=False)))

    def check_segments(self, got: Any, acked: list[tuple] | None) -> None:
        """Segments hold the stream's tokens at their offsets; none seen before (or acknowledged) is missing."""
        held = {s.seq: (s.seq, s.start, s.end, s.tokens) for s in got.segments}
        for _, start, end, tokens in held.values():
            if tuple(got.ids[start:end]) != tokens:
                self.figures["tokens_altered_or_duplicated"] += len(tokens)
        must = acked if acked is not None else list(self.seen.values())
        self.figures["acked_segments_checked"] += len(must)
        self.figures["segments_lost"] += sum(1 for seg in must if held.get(seg[0]) != seg)
        self.seen.update(held)
        self.figures["torn_tails_seen"] += int(got.torn is not None)


def reference_segments(tokenizer: Any, text: str) -> list[tuple]:
    """The segments an engine must hold once ``text`` was acknowledged (fed in any pieces, no flush)."""
    from xl3m_stream.segmenter import Segmenter
    from xl3m_stream.tokenizer import IncrementalTokenizer

    itok = IncrementalTokenizer(tokenizer)
    return [(s.seq, s.start, s.end, s.tokens) for s in Segmenter(SEGMENT_TOKENS).push(itok.push(text))]


# ------------------------------------------------------------------------------- the api child


async def api_child(model: str, state_dir: str, text_path: str, seed: int, fsync: str, final: bool) -> None:
    """Feed the file into an engine on ``state_dir`` from where the state stops, ``ack`` after each
    feed; then ``final``: flush and end, else print ``idle`` and wait to be killed (never flushing,
    so the acknowledged text alone decides the segments)."""
    import anyio

    from xl3m_stream import Engine, EngineConfig

    text = Path(text_path).read_text(encoding="utf-8")
    rng = random.Random(seed)
    config = EngineConfig(
        model=model,
        devices=["cpu"],
        segment_tokens=SEGMENT_TOKENS,
        question_tokens=8,
        batch_size=4,
        batch_wait_ms=1,
        max_pending_segments=4,
        store_segments=8,
        max_new_tokens=4,
        state_dir=state_dir,
        fsync=fsync,  # type: ignore[arg-type]
        fsync_interval_s=0.05,
        snapshot_every_s=0.3,
        snapshot_every_segments=3,
    )
    async with Engine(config) as engine:
        assert engine.recovery is not None
        at = engine.recovery.chars
        print(f"start {at}", flush=True)
        while at < len(text):
            piece = text[at : at + rng.randint(1, 200)]
            await engine.feed(piece)
            at += len(piece)
            print(f"ack {at}", flush=True)
            await anyio.sleep(rng.uniform(0, 0.005))
        if not final:
            print("idle", flush=True)
            await anyio.sleep_forever()  # (scoring and snapshots go on in the background)
        await engine.flush()
        print(f"done {engine.stream_tokens}", flush=True)


# ------------------------------------------------------------------------------- the soak


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from xl3m_stream.persistence import read_snapshot

    rng = random.Random(args.seed)
    work = Path(args.keep or tempfile.mkdtemp(prefix="xl3m-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model == "tiny":
        from xl3m_stream.testing import build_tiny_model

        model = str(build_tiny_model(work / "tiny-model"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    state, log = work / "state", work / "stream.log"
    log.write_text("", encoding="utf-8")
    checker = Checker(tokenizer, state)
    figures: dict[str, Any] = {"kill_rounds": 0, "finished_before_kill": 0}
    started = now()
    lines = 0

    def ingest_argv(fsync: str) -> list[str]:
        return [
            sys.executable, "-m", "xl3m_stream.cli", "ingest", str(log), "--state-dir", str(state), "--model", model,
            "--fsync", fsync, "--segment-tokens", str(SEGMENT_TOKENS), "--batch-size", "4", "--no-progress",
        ]  # fmt: skip

    def api_argv(fsync: str, seed: int, final: bool = False) -> list[str]:
        return [sys.executable, __file__, "--child", model, str(state), str(log), str(seed), fsync, str(int(final))]

    # how long a run takes: the kills are drawn over that span (most of it is loading torch)
    text = block(rng, lines, args.lines)
    lines += args.lines
    log.write_text(text, encoding="utf-8")
    t0 = now()
    if args.mode == "ingest":
        calibrate = Child(ingest_argv("interval"))
        calibrate.proc.wait()
        span = now() - t0
        if calibrate.proc.returncode != 0:
            raise SystemExit(f"the first run failed: {''.join(calibrate.stderr)[-2000:]}")
    else:
        calibrate = Child(api_argv("interval", 0))
        calibrate.wait_for(lambda lines: lines[-1].startswith("idle"))
        span = now() - t0
        calibrate.kill_after(0)
    got = checker.read()
    checker.check_segments(got, reference_segments(tokenizer, text) if args.mode == "api" else None)
    if tokenizer.decode(got.ids) + got.pending_text != text:
        raise SystemExit("the first (uninterrupted) run did not leave the whole input in the state")
    figures["first_run_seconds"] = round(span, 2)

    for r in range(args.rounds):
        policy = POLICIES[r % len(POLICIES)]
        if args.mode == "ingest":  # the log grows
            with log.open("a", encoding="utf-8") as f:
                f.write(block(rng, lines, args.lines))
            lines += args.lines
        else:  # the api child feeds an ever longer text, resumed where the state stops
            with log.open("a", encoding="utf-8") as f:
                f.write(block(rng, lines, args.lines // 4))
            lines += args.lines // 4
        text = log.read_text(encoding="utf-8")
        child = Child(ingest_argv(policy) if args.mode == "ingest" else api_argv(policy, r + 1))
        out = []
        if args.mode == "ingest":  # anywhere in the run: loading, restoring, reading, scoring, closing
            t0 = now()
            killed = child.kill_after(rng.uniform(0.45 * span, 1.05 * span))
            if not killed:
                span = now() - t0  # the kills follow how long a run takes now
        else:  # while it restores (1 round in 6), or after a random number of acknowledged feeds
            acks = 0 if rng.random() < 1 / 6 else rng.randint(1, 25)
            out = child.wait_for(
                lambda lines, n=acks: (
                    lines[-1].startswith("idle")
                    or (lines[-1].startswith("start") and n == 0)
                    or sum(line.startswith("ack ") for line in lines) >= max(n, 1)
                )
            )
            killed = child.kill_after(rng.uniform(0, 0.05))
        out += child.output()
        figures["kill_rounds"] += int(killed)
        figures["finished_before_kill"] += int(not killed)
        if not killed and child.proc.returncode != 0:
            raise SystemExit(f"round {r}: the run failed: {''.join(child.stderr)[-2000:]}")
        got = checker.read()
        if got is None:
            continue
        held = tokenizer.decode(got.ids) + got.pending_text
        checker.figures["tokens_altered_or_duplicated"] += checker.bad_tokens(held, text)
        if args.mode == "ingest":
            if not killed and held != text:  # it ended on its own: the whole file must be in
                figures["finished_runs_incomplete"] = figures.get("finished_runs_incomplete", 0) + 1
            checker.check_segments(got, None)
        else:
            acked = max([int(line.split()[1]) for line in out if line.startswith("ack ")] + [0])
            if len(held) < acked:  # acknowledged characters missing from the log
                figures["acknowledged_chars_lost"] = figures.get("acknowledged_chars_lost", 0) + acked - len(held)
            # fed in pieces, the engine's tokenizer may still hold the last characters as pending text
            # (kept in the state) where one-shot tokenizing emitted them: require what it emitted
            emitted = len(got.ids)
            checker.check_segments(got, [s for s in reference_segments(tokenizer, text[:acked]) if s[2] <= emitted])
        if args.progress:
            print(
                f"round {r + 1}/{args.rounds} fsync={policy} {'killed' if killed else 'finished'}: "
                f"{len(got.ids):,} tokens, {checker.figures}",
                file=sys.stderr,
                flush=True,
            )

    final = Child(ingest_argv("interval") if args.mode == "ingest" else api_argv("interval", 10**6, final=True))
    final.proc.wait()
    if final.proc.returncode != 0:
        raise SystemExit(f"the final run failed: {''.join(final.stderr)[-2000:]}")
    got = checker.read()
    text = log.read_text(encoding="utf-8")
    held = tokenizer.decode(got.ids) + got.pending_text
    checker.figures["tokens_altered_or_duplicated"] += checker.bad_tokens(held, text)
    whole = held == text
    checker.check_segments(got, None if args.mode == "ingest" else reference_segments(tokenizer, text))
    snap = read_snapshot(state)
    ask = Child(
        [sys.executable, "-m", "xl3m_stream.cli", "ask", "--state-dir", str(state), "-q", "What is the pass key?"]
        + ["--json", "--model", model, "--max-new-tokens", "4"]
    )
    ask.proc.wait()
    answer = "".join(ask.output())
    figures.update(checker.figures)
    figures.update(
        rounds=args.rounds,
        mode=args.mode,
        fsync_policies=list(POLICIES),
        final_whole_input_once=whole,
        final_unscored_segments=len(snap.unscored) if snap is not None else None,
        final_tokens=len(got.ids),
        final_segments=len(got.segments),
        final_ask_ok=ask.proc.returncode == 0 and bool(json.loads(answer or "{}").get("segments")),
        input_chars=len(text),
        seconds=round(now() - started, 1),
        model="tiny (random weights, tests' tokenizer)" if args.model == "tiny" else args.model,
        cpu=cpu_model(),
        cores=os.cpu_count(),
        command=" ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]),
    )
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import anyio

        model, state_dir, text_path, seed, fsync, final = sys.argv[2:8]
        anyio.run(api_child, model, state_dir, text_path, int(seed), fsync, final == "1")
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100, help="SIGKILL rounds (default 100)")
    p.add_argument("--mode", choices=["ingest", "api"], default="ingest", help="what is killed (default ingest)")
    p.add_argument("--model", default="tiny", help="tiny (built here, default), a model directory or an alias")
    p.add_argument("--lines", type=int, default=120, help="log lines appended per round (ingest mode)")
    p.add_argument("--seed", type=int, default=20240601)
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    p.add_argument("--progress", action="store_true", help="one line per round on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    result = soak(args)
    emit(result, args.json)
    ok = (
        result["segments_lost"] == 0
        and result["tokens_altered_or_duplicated"] == 0
        and not result.get("finished_runs_incomplete")
        and not result.get("acknowledged_chars_lost")
        and result["final_whole_input_once"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
