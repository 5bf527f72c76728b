"""Which scorer selects best on real text, alone and fused? Selection only (no reading).

For each scorer and each sample of the real-text tasks, one engine run with the question set
streams the haystack (the default relevance: certainty, lexical, dense) and reports, per signal:

* ``certainty``: the segments the scorer's certainty alone would select (the engine with
  ``relevance=["certainty"]`` keeps the best by it and selects the best of those: the global
  top under the budget), computed from the same run's ``SegmentScored`` events;
* ``fused``: what the engine selected (``Engine.key_context``: arrival z-scores, the bounded
  store, rank fusion at ask);
* ``bm25`` / ``dense``: the lexical and dense signals alone (the stream's running BM25 and the
  MiniLM cosine, as the engine computed them), same budget.

Printed per scorer and task: selection recall (evidence in the key context), the median rank of
the evidence segment by each signal, and the scoring throughput (stream tokens/s of the run).
The reader is not loaded (``reader_model=None``): the budget counts the scorer's tokens.

    python benchmarks/scorers.py --samples 10 --length 16384 --json
    python benchmarks/scorers.py --scorer gemma-3-270m --samples 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model

SCORERS = ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b")
TASKS = ("prose-lexical", "prose-paraphrase", "log-real")
SIGNALS = ("certainty", "bm25", "dense", "fused")


async def one_sample(scorer: str, task: str, seed: int, length: int) -> dict[str, Any]:
    import anyio

    from xl3m_stream import Engine, EngineConfig, SegmentScored
    from xl3m_stream.evaluate.baselines import select_by_scores
    from xl3m_stream.evaluate.metrics import contains_evidence, evidence_rank
    from xl3m_stream.evaluate.runner import cut_segments
    from xl3m_stream.evaluate.tasks import make_sample

    config = EngineConfig(model=scorer, reader_model=None)
    async with Engine(config) as engine:
        tok = engine.tokenizer

        def count(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False))

        sample = make_sample(task, length=length, seed=seed, count_tokens=count)
        await engine.set_question(sample.question)
        segments = cut_segments(tok, sample.context, engine.config)
        texts = [tok.decode(list(s.tokens)) for s in segments]
        scores: dict[int, dict[str, float]] = {}
        events = engine.events()

        async def collect() -> None:
            async for event in events:
                if isinstance(event, SegmentScored):
                    scores[event.seq] = event.scores

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await engine.process([sample.context])
            await events.aclose()
        seconds = time.perf_counter() - t0
        ctx = await engine.key_context(sample.question)
        budget = ctx.budget
    sizes = [s.n_tokens for s in segments]
    by_signal = {
        "certainty": [scores[s.seq][config.measure] for s in segments],
        "bm25": [scores[s.seq]["bm25"] for s in segments],
        "dense": [scores[s.seq]["dense"] for s in segments],
    }
    out: dict[str, Any] = {"task": task, "seed": seed, "tokens": sample.meta["tokens"], "seconds": seconds}
    for name, values in by_signal.items():
        chosen = select_by_scores(values, sizes, budget)
        order = sorted(range(len(segments)), key=lambda j: (-values[j], -j))
        out[name] = {
            "selected": contains_evidence(sample, "".join(texts[j] for j in chosen)),
            "rank": evidence_rank(sample, [texts[j] for j in order]),
        }
    out["fused"] = {"selected": contains_evidence(sample, "".join(s.text for s in ctx.segments)), "rank": None}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scorer", action="append", help=f"scorer alias (repeatable; default: {', '.join(SCORERS)})")
    p.add_argument("--task", action="append", choices=TASKS)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import anyio

    started = time.perf_counter()
    rows = []
    for scorer in args.scorer or SCORERS:
        results = []
        for task in args.task or TASKS:
            for seed in range(args.samples):
                r = anyio.run(one_sample, scorer, task, seed, args.length)
                results.append(r)
                marks = " ".join(f"{s}={'Y' if r[s]['selected'] else '.'}{r[s]['rank'] or ''}" for s in SIGNALS)
                print(f"{scorer} {task} {seed}: {marks} ({r['tokens'] / r['seconds']:.0f} tok/s)", file=sys.stderr)
        for task in args.task or TASKS:
            mine = [r for r in results if r["task"] == task]
            row = {"scorer": scorer, "task": task, "samples": len(mine)}
            for s in SIGNALS:
                row[f"{s}_recall"] = round(statistics.fmean(r[s]["selected"] for r in mine), 3)
                ranks = [r[s]["rank"] for r in mine if r[s]["rank"] is not None]
                if s != "fused":
                    row[f"{s}_median_rank"] = statistics.median(ranks) if ranks else None
            row["tokens_per_s"] = round(sum(r["tokens"] for r in mine) / sum(r["seconds"] for r in mine), 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {
        "cpu": cpu_model(),
        "length": args.length,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    print(f"cpu: {result['cpu']}; {result['seconds']} s", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
