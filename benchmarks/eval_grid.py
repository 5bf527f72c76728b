"""Run a planned grid of evaluations (tasks x lengths x methods) and write one report.

    python benchmarks/eval_grid.py --plan cpu --out reports/cpu
    python benchmarks/eval_grid.py --plan gpu --device cuda:0 --out $OUT/gpu

Each plan is a list of `xl3m-stream eval` runs (see PLANS). Per-sample results are appended
to OUT/samples.jsonl as they finish, so an interrupted run keeps what it measured; at the end
OUT gets results.json, results.md and the heatmaps (xl3m_stream.evaluate.report).

    python benchmarks/eval_grid.py --merge reports/a reports/b --out docs/results

combines earlier grids (their results.json) into one report in OUT, without running anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import anyio
import msgspec

from xl3m_stream import EngineConfig
from xl3m_stream.evaluate.report import write_report
from xl3m_stream.evaluate.runner import EvalConfig, Report, SampleResult, aggregate, machine_description, run_eval
from xl3m_stream.evaluate.tasks import TASKS

ALL = ["xl3m", "xl3m-entropy", "xl3m-nll", "xl3m-gain", "xl3m-tgain", "hybrid", "truncate", "sink", "bm25", "full"]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
K = 1024

PLANS: dict[str, list[dict[str, Any]]] = {
    # one H100: the default model from inside its window to 128x it (1M tokens)
    "gpu": [
        dict(tasks=["passkey", "needle"], lengths=[4000, 32 * K, 64 * K, 256 * K], samples=5, depths=DEPTHS),
        dict(tasks=["multikey", "multivalue", "vartrack", "logs"], lengths=[4000, 64 * K, 256 * K], samples=3),
        dict(tasks=["passkey", "needle"], lengths=[1024 * K], samples=2, depths=[0.3, 0.7]),
        dict(tasks=["multikey", "logs"], lengths=[1024 * K], samples=1),
    ],
    # 2 CPU cores (about 470 stream tokens/s with both, 255 per process when two share them):
    # 32x the window first (the acceptance figures), then every task beyond the window
    "cpu": [
        dict(tasks=["passkey"], lengths=[256 * K], samples=3, depths=[0.2, 0.5, 0.8]),
        dict(tasks=["needle"], lengths=[256 * K], samples=3, depths=[0.2, 0.5, 0.8]),
        dict(tasks=list(TASKS), lengths=[16 * K], samples=1, depths=[0.5], methods=ALL + ["embed"]),
        dict(tasks=list(TASKS), lengths=[4000], samples=2, methods=ALL + ["embed"]),
    ],
    # the effect of segment length, question length and budget (needle, 16k tokens, one sample)
    "sweep": [
        *[dict(tasks=["needle"], lengths=[16 * K], samples=1, segment_tokens=n) for n in (128, 256, 512)],
        *[dict(tasks=["needle"], lengths=[16 * K], samples=1, scoring_question_tokens=n) for n in (8, 128)],
        *[dict(tasks=["needle"], lengths=[16 * K], samples=1, context_tokens=n) for n in (256, 1024)],
    ],
    "smoke": [dict(tasks=["passkey", "needle"], lengths=[2000], samples=1, methods=["xl3m", "bm25", "truncate"])],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=sorted(PLANS))
    p.add_argument("--merge", nargs="+", metavar="DIR", help="combine these grids' results.json into OUT")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--runs", default=None, help="comma-separated run numbers of the plan (1-based); default all")
    p.add_argument("--time-limit", type=float, default=None, help="stop starting new runs after this many seconds")
    args = p.parse_args(argv)
    if (args.plan is None) == (args.merge is None):
        p.error("give exactly one of --plan and --merge")
    if args.merge:
        return merge(args.merge, args.out)
    os.makedirs(args.out, exist_ok=True)
    engine = EngineConfig(model=args.model, devices=[args.device], dtype=args.dtype, batch_size=args.batch_size)
    started = time.perf_counter()
    samples: list[SampleResult] = []
    log_path = os.path.join(args.out, "samples.jsonl")
    model, window = "", 0
    chosen = {int(r) for r in args.runs.split(",")} if args.runs else None
    for i, run in enumerate(PLANS[args.plan]):
        if chosen is not None and i + 1 not in chosen:
            continue
        if args.time_limit and time.perf_counter() - started > args.time_limit:
            print(f"grid: time limit reached; skipped runs {i}..", file=sys.stderr)
            break
        spec = dict(run)
        changes = {k: spec.pop(k) for k in ("segment_tokens", "context_tokens") if k in spec}
        methods = spec.pop("methods", ALL if args.plan != "sweep" else ["xl3m", "bm25"])
        cfg = EvalConfig(engine=engine.replace(**changes), methods=methods, **spec)
        tag = ",".join(f"{k}={v}" for k, v in changes.items()) or (
            f"scoring_question_tokens={cfg.scoring_question_tokens}" if cfg.scoring_question_tokens else ""
        )
        print(f"grid: run {i + 1}/{len(PLANS[args.plan])}: {cfg.tasks} x {cfg.lengths}", file=sys.stderr, flush=True)
        report = anyio.run(
            lambda cfg=cfg: run_eval(cfg, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        )
        model, window = report.model, report.window
        if tag:  # sweeps: tell the settings apart in the method column
            report.samples = [msgspec.structs.replace(s, method=f"{s.method} [{tag}]") for s in report.samples]
        with open(log_path, "ab") as log:
            for s in report.samples:
                log.write(msgspec.json.encode(s) + b"\n")
        samples.extend(report.samples)
    full = Report(
        model=model,
        window=window,
        machine=machine_description(),
        config={"plan": args.plan, "runs": PLANS[args.plan], "engine": msgspec.to_builtins(engine)},
        results=aggregate(samples),
        samples=samples,
        seconds=time.perf_counter() - started,
    )
    for path in write_report(full, args.out):
        print(f"grid: wrote {path}", file=sys.stderr)
    return 0


def merge(directories: list[str], out: str) -> int:
    """One report from several grids: samples concatenated, wall times added, runs listed."""
    reports = []
    for d in directories:
        path = os.path.join(d, "results.json")
        if not os.path.isfile(path):
            raise SystemExit(f"grid: no results.json in {d}")
        with open(path, "rb") as f:
            reports.append(msgspec.json.decode(f.read(), type=Report))
    samples = [s for r in reports for s in r.samples]
    full = Report(
        model=reports[0].model,
        window=reports[0].window,
        machine=reports[0].machine,
        config={"merged": [{"directory": d, **r.config} for d, r in zip(directories, reports)]},
        results=aggregate(samples),
        samples=samples,
        seconds=sum(r.seconds for r in reports),
    )
    for path in write_report(full, out):
        print(f"grid: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
