"""The Ray backend against the local one, end to end through the command line, on a real model.

Writes a passkey document of ``--tokens`` tokens (the evaluation's passkey task, seeded), then
runs ``xl3m-stream ask FILE --question Q --json`` twice, once with ``--backend local`` and once
with ``--backend ray --workers N``, and compares what a user sees: the answer and the key
context's segments (offsets and text; scores within ``--tolerance``). Prints the wall time of
each run and, as the last stdout line, one JSON object.

    python benchmarks/ray_ask.py --tokens 60000 --workers 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit


def run_ask(path: Path, question: str, backend: list[str], extra: list[str]) -> tuple[dict[str, Any], float]:
    command = [sys.executable, "-m", "xl3m_stream.cli", "ask", str(path), "--question", question, "--json"]
    start = time.perf_counter()
    done = subprocess.run([*command, *backend, *extra], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(backend)}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def differences(local: dict[str, Any], ray: dict[str, Any], tolerance: float) -> list[str]:
    found: list[str] = []
    if local["answer"] != ray["answer"]:
        found.append(f"answers differ: {local['answer']!r} vs {ray['answer']!r}")
    a, b = local["segments"], ray["segments"]
    if [(s["start"], s["end"], s["text"]) for s in a] != [(s["start"], s["end"], s["text"]) for s in b]:
        found.append("key-context segments differ")
    else:
        worst = max((abs(x["score"] - y["score"]) for x, y in zip(a, b)), default=0.0)
        if worst > tolerance:
            found.append(f"segment scores differ by up to {worst:g}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=60_000, help="passkey document length (default 60000)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2, help="Ray scoring actors (default 2)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest score difference accepted")
    p.add_argument("--json", action="store_true")
    p.add_argument("engine_args", nargs=argparse.REMAINDER, help="after --: options for both ask runs")
    args = p.parse_args(argv)
    extra = [a for a in args.engine_args if a != "--"]

    from xl3m_stream import EngineConfig, models
    from xl3m_stream.evaluate.tasks import make_sample

    model = next((extra[i + 1] for i, a in enumerate(extra[:-1]) if a == "--model"), EngineConfig().model)
    tok = models.load_tokenizer(models.resolve(model))
    sample = make_sample(
        "passkey",
        length=args.tokens,
        seed=args.seed,
        count_tokens=lambda s: len(tok.encode(s, add_special_tokens=False)),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passkey.txt"
        path.write_text(sample.context, encoding="utf-8")
        local, local_s = run_ask(path, sample.question, ["--backend", "local"], extra)
        ray, ray_s = run_ask(path, sample.question, ["--backend", "ray", "--workers", str(args.workers)], extra)
    found = differences(local, ray, args.tolerance)
    emit(
        {
            "cpu": cpu_model(),
            "stream_tokens": local["stream_tokens"],
            "question": sample.question,
            "key": sample.answers[0],
            "local_answer": local["answer"],
            "ray_answer": ray["answer"],
            "correct": sample.answers[0] in local["answer"],
            "segments": len(local["segments"]),
            "same": not found,
            "differences": found,
            "local_seconds": round(local_s, 1),
            "ray_seconds": round(ray_s, 1),
            "workers": args.workers,
        },
        args.json,
    )
    return 0 if not found else 1


if __name__ == "__main__":
    raise SystemExit(main())
