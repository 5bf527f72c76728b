"""Driver for tests/test_crash.py (not a test module): feed a text file into an engine kept in a
state directory, printing ``ack <chars>`` on stdout after each ``feed`` returns.

The test kills this process with SIGKILL at random points and starts it again on the same
state directory: it resumes at the characters the restored state holds (``engine.recovery``),
so the stream it builds over all runs must be exactly the file's text.

    python tests/crash_driver.py MODEL_DIR STATE_DIR TEXT_FILE SEED FSYNC [LIMIT]

With LIMIT (characters), it stops feeding there, prints ``idle`` and waits to be killed (so a
kill round never reaches the end of the text however late the kill comes); without it, it
feeds to the end, flushes and prints ``done``.
"""

from __future__ import annotations

import random
import sys

import anyio

from xl3m_stream import Engine, EngineConfig


def config(model: str, state_dir: str, fsync: str) -> EngineConfig:
    return EngineConfig(
        model=model,
        devices=["cpu"],
        relevance=["certainty", "lexical"],  # the embedder would only slow the kill rounds
        segment_tokens=32,
        question_tokens=8,  # rolling questions: each segment scored against the stream before it
        batch_size=4,
        batch_wait_ms=1,
        max_pending_segments=4,  # backpressure: unscored segments are in flight at most kills
        store_segments=8,
        context_tokens=200,
        max_new_tokens=4,
        state_dir=state_dir,
        fsync=fsync,  # type: ignore[arg-type]
        fsync_interval_s=0.05,
        snapshot_every_s=0.3,
        snapshot_every_segments=3,  # snapshots often, so that kills land inside them too
    )


async def main(model: str, state_dir: str, text_path: str, seed: int, fsync: str, limit: int | None) -> None:
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    end = len(text) if limit is None else min(limit, len(text))
    rng = random.Random(seed)
    async with Engine(config(model, state_dir, fsync)) as engine:
        report = engine.recovery
        assert report is not None
        at = report.chars
        print(f"start {at} {report.tokens} {report.replayed_records} {report.requeued_segments}", flush=True)
        while at < end:
            piece = text[at : min(end, at + rng.randint(1, 120))]
            await engine.feed(piece)
            at += len(piece)
            print(f"ack {at}", flush=True)
            if limit is not None:  # a stream that arrives over time: kills land between and inside feeds
                await anyio.sleep(rng.uniform(0, 0.02))
        if limit is not None:
            print("idle", flush=True)
            await anyio.sleep_forever()  # (scoring and snapshots go on in the background)
        await engine.flush()
        print(f"done {engine.stream_tokens}", flush=True)


if __name__ == "__main__":
    model_dir, state, text_file, seed_arg, policy = sys.argv[1:6]
    stop = int(sys.argv[6]) if len(sys.argv) > 6 else None
    anyio.run(main, model_dir, state, text_file, int(seed_arg), policy, stop)
