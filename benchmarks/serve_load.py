"""Load on ``xl3m-stream serve``: concurrent feeders and askers over loopback HTTP.

``--feeders`` clients post log-like text to one stream as fast as they are acknowledged while
``--askers`` clients ask it questions, for ``--seconds``. Prints the ask latency (p50/p99), the
feed throughput (acknowledged tokens and bytes per second), the errors by status, and the CPU.

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --api-key KEY
    python benchmarks/serve_load.py --model DIR --seconds 5       # starts (and stops) a server

Started here, the server runs ``xl3m-stream serve`` with ``--serve-args`` added (e.g. the tiny
test model's settings); numbers from the tiny model measure the HTTP path, not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit, median


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _lines(rng: random.Random, n: int) -> str:
    levels = ["INFO"] * 8 + ["WARN", "ERROR"]
    services = ["api", "db", "auth", "queue"]
    return "".join(
        f"2024-05-01T12:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z {rng.choice(levels)} "
        f"{rng.choice(services)} request {rng.randrange(10**6)} took {rng.randrange(900)} ms\n"
        for _ in range(n)
    )


def _start_server(model: str, extra: list[str], key: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "xl3m_stream.cli", "serve", "--port", str(port), "--api-key", key,
           "--model", model, *extra]  # fmt: skip
    proc = subprocess.Popen(cmd)
    return proc, f"http://127.0.0.1:{port}"


async def _wait_up(client: Any, proc: Any) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("server did not come up")


async def run(args: argparse.Namespace, url: str, proc: Any) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.feeders + args.askers + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        await _wait_up(client, proc)
        path = f"/v1/streams/{args.stream}"
        (await client.post(f"{path}/feed", content=_lines(random.Random(0), 50).encode())).raise_for_status()
        questions = ["Which service logged an ERROR?", "What took the longest?", "Is the db slow?"]
        for q in questions:  # warm-up: the first ask of a question re-scores the store against it
            (await client.post(f"{path}/ask", json={"question": q, "max_new_tokens": 2})).raise_for_status()
        errors: Counter[str] = Counter()
        fed_tokens = fed_bytes = feeds = 0
        latencies: list[float] = []
        stop = time.monotonic() + args.seconds

        async def feeder(i: int) -> None:
            nonlocal fed_tokens, fed_bytes, feeds
            rng = random.Random(i + 1)
            while time.monotonic() < stop:
                body = _lines(rng, args.lines).encode()
                try:
                    r = await client.post(f"{path}/feed", content=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if r.status_code == 200:
                    fed_tokens += r.json()["tokens"]
                    fed_bytes += len(body)
                    feeds += 1
                else:
                    errors[str(r.status_code)] += 1

        async def asker(i: int) -> None:
            n = 0
            while time.monotonic() < stop:
                q = questions[(i + n) % len(questions)]
                n += 1
                started = time.perf_counter()
                try:
                    r = await client.post(f"{path}/ask", json={"question": q, "max_new_tokens": args.max_new_tokens})
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[str(r.status_code)] += 1

        started = time.perf_counter()
        await asyncio.gather(*[feeder(i) for i in range(args.feeders)], *[asker(i) for i in range(args.askers)])
        wall = time.perf_counter() - started
    return {
        "cpu": cpu_model(),
        "seconds": round(wall, 2),
        "feeders": args.feeders,
        "askers": args.askers,
        "feeds": feeds,
        "feed_tokens_per_s": round(fed_tokens / wall, 1),
        "feed_kib_per_s": round(fed_bytes / 1024 / wall, 1),
        "asks": len(latencies),
        "ask_p50_s": round(median(latencies), 3),
        "ask_p99_s": round(_quantile(latencies, 0.99), 3),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (default: start one with --model)")
    p.add_argument("--model", help="start a server on this model (directory, alias, .gguf)")
    p.add_argument("--serve-args", default="", help="more options for the started server (one string)")
    p.add_argument("--api-key", default=os.environ.get("XL3M_STREAM_API_KEY"), help="bearer token")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--feeders", type=int, default=8)
    p.add_argument("--askers", type=int, default=4)
    p.add_argument("--lines", type=int, default=20, help="log lines per feed request (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--stream", default="load", help="stream name (default load)")
    p.add_argument("--json", action="store_true", help="also print one JSON object")
    args = p.parse_args()
    if not args.url and not args.model:
        p.error("give --url of a running server or --model to start one")
    proc = None
    url = args.url
    if url is None:
        args.api_key = args.api_key or "serve-load"
        proc, url = _start_server(args.model, shlex.split(args.serve_args), args.api_key)
    try:
        result = asyncio.run(run(args, url, proc))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    emit(result, args.json)


if __name__ == "__main__":
    main()
