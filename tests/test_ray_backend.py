"""backend="ray": scoring in Ray actors on a local Ray, the tiny model; no mocks of Ray.

One local Ray (2 CPUs) serves the module; each engine starts its own 2 actors on it. Compared
with the local backend on the same stream (certainty and lexical signals): every segment's
scores, the store and the key context. Several batches are in flight on Ray, one locally: the
engine takes scores in in stream order, so BM25's running statistics see the same sequence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import tiny_config

from xl3m_stream import Engine, EngineConfig, ErrorEvent, SegmentScored
from xl3m_stream.config import MEASURES
from xl3m_stream.errors import ConfigError

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.anyio

QUESTION = "What is the pass key?"
TEXT = (
    "".join(f"line {i}: The grass is green. The sky is blue. The sun is yellow.\n" for i in range(40))
    + "The pass key is 48213. Remember it.\n"
    + "".join(f"line {i}: The grass is green. The sky is blue.\n" for i in range(40, 70))
)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(model_dir, backend: str = "local", **changes) -> EngineConfig:
    extra = {"backend": "ray", "workers": 2} if backend == "ray" else {}
    return tiny_config(model_dir, **{**extra, **changes})


async def run(cfg: EngineConfig, crash: str | None = None) -> dict:
    """Feed TEXT in pieces, flush, select: what came out. ``crash="stall"``: worker 0's first
    batch stalls and the actor is killed (Ray restarts it) while it is in flight; ``"exit"``:
    each worker's first batch makes its process exit."""
    async with Engine(cfg) as engine:
        events = engine.events()
        async with anyio.create_task_group() as tg:
            if crash is not None:
                workers = engine._dispatch.workers.workers
                for worker in workers[:1] if crash == "stall" else workers:
                    ray.get(worker.actor._crash_next.remote(crash))
                if crash == "stall":
                    tg.start_soon(kill_in_flight, workers[0])
            await engine.process([TEXT[:800], TEXT[800:1600], TEXT[1600:]])
        context = await engine.key_context(QUESTION)
        seen = []
        while events._buffer:
            seen.append(events._buffer.popleft())
        scored = [e for e in seen if isinstance(e, SegmentScored)]
        return {
            "scores": {e.seq: e.scores for e in scored},
            "scored_seqs": sorted(e.seq for e in scored),
            "store": sorted(e.segment.seq for e in engine.store),
            "context": [s.seq for s in context.segments],
            "errors": [e for e in seen if isinstance(e, ErrorEvent)],
            "failed": engine.failed_segments,
            "stats": engine.stats(),
            "workers": [(w.batches, w.failures) for w in engine._dispatch.workers.workers]
            if cfg.backend == "ray"
            else None,
        }


async def kill_in_flight(worker) -> None:
    with anyio.fail_after(60):
        while worker.inflight == 0:
            await anyio.sleep(0.02)
    await anyio.sleep(0.3)  # the batch has reached the actor, which sleeps in it
    ray.kill(worker.actor, no_restart=False)


_local: dict[str, dict] = {}


async def local_run(model_dir) -> dict:
    if "run" not in _local:
        _local["run"] = await run(config(model_dir))
    return _local["run"]


def assert_same(got: dict, want: dict) -> None:
    assert got["scored_seqs"] == want["scored_seqs"]  # each segment once: none lost, none twice
    for seq, scores in want["scores"].items():
        assert set(got["scores"][seq]) == set(scores) >= set(MEASURES)
        for m in scores:  # the certainty measures and bm25
            assert abs(got["scores"][seq][m] - scores[m]) <= 1e-5, (seq, m)
    assert got["store"] == want["store"]
    assert got["context"] == want["context"]
    assert got["failed"] == []


def test_importing_the_package_does_not_import_ray() -> None:
    code = "import sys, xl3m_stream, xl3m_stream.engine, xl3m_stream.cli; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_ray_scores_like_the_local_backend(tiny_model_dir, local_ray, anyio_backend) -> None:
    want = await local_run(tiny_model_dir)
    got = await run(config(tiny_model_dir, "ray"))
    assert_same(got, want)
    assert got["errors"] == []
    assert all(batches > 0 for batches, _ in got["workers"])  # both actors scored


async def test_a_killed_actor_loses_and_duplicates_nothing(tiny_model_dir, local_ray, anyio_backend) -> None:
    want = await local_run(tiny_model_dir)
    got = await run(config(tiny_model_dir, "ray"), crash="stall")
    assert_same(got, want)
    assert got["errors"] and all(e.retrying and e.replica == 0 for e in got["errors"])
    assert got["workers"][0][1] >= 1 and got["stats"].errors == len(got["errors"])


async def test_a_worker_that_exits_inside_score_loses_and_duplicates_nothing(
    tiny_model_dir, local_ray, anyio_backend
) -> None:
    want = await local_run(tiny_model_dir)
    got = await run(config(tiny_model_dir, "ray"), crash="exit")
    assert_same(got, want)
    assert got["errors"] and all(e.retrying for e in got["errors"])
    assert "Actor" in got["errors"][0].message


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # nothing here depends on the event loop
async def test_every_actor_dead_for_good_fails_the_batch_clearly(tiny_model_dir, local_ray) -> None:
    async with Engine(config(tiny_model_dir, "ray")) as engine:
        for worker in engine._dispatch.workers.workers:
            ray.kill(worker.actor, no_restart=True)
        with anyio.fail_after(60):  # bounded: no hang
            await engine.process([TEXT[:400]])
        assert engine.failed_segments and engine.stats().segments_scored == 0
        assert all(w.dead for w in engine._dispatch.workers.workers)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # nothing here depends on the event loop
async def test_bad_ray_settings_fail_with_one_clear_error(tiny_model_dir, local_ray) -> None:
    with pytest.raises(ConfigError, match="workers: must be >= 1"):
        config(tiny_model_dir, "ray", workers=0)
    with pytest.raises(ConfigError, match=r"workers=256 need 256 GPU\(s\), one each, but the Ray cluster has"):
        async with Engine(config(tiny_model_dir, "ray", workers=256, devices=["cuda"])):
            pass
    with pytest.raises(ConfigError, match="need 3 CPU"):  # the module's Ray has 2 CPUs
        async with Engine(config(tiny_model_dir, "ray", workers=3)):
            pass


def cli(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "xl3m_stream.cli", *args, "--model", str(model_dir), "--device", "cpu"]
    command += ["--dtype", "float32", "--segment-tokens", "32", "--max-new-tokens", "6"]  # relevance: conftest
    return subprocess.run(
        command, capture_output=True, text=True, input="", timeout=300, env={**os.environ, **(env or {})}
    )


def test_unreachable_ray_address_is_one_clear_error(tiny_model_dir) -> None:
    # in a subprocess: this process's Ray (the module's) would be used whatever the address
    out = cli(tiny_model_dir, "ask", "-", "--question", QUESTION, "--backend", "ray", "--ray-address", "127.0.0.1:9")
    assert out.returncode != 0
    assert "ray_address '127.0.0.1:9': cannot connect to the Ray cluster" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_ask_on_ray_answers_like_local(tiny_model_dir, tmp_path: Path) -> None:
    lines = [f"The grass is green. The sky is blue. Line {i}." for i in range(300)]
    lines.insert(150, "The pass key is 48213. Remember it.")
    path = tmp_path / "passkey.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    answers = []
    for backend in (["--backend", "local"], ["--backend", "ray", "--workers", "2"]):
        out = cli(tiny_model_dir, "ask", str(path), "--question", QUESTION, "--json", *backend)
        assert out.returncode == 0, out.stderr
        answers.append(json.loads(out.stdout))
    local, remote = answers
    assert remote["answer"] == local["answer"]
    assert [(s["start"], s["end"]) for s in remote["segments"]] == [(s["start"], s["end"]) for s in local["segments"]]
    assert [s["score"] for s in remote["segments"]] == pytest.approx([s["score"] for s in local["segments"]], abs=1e-5)
