"""Compare key-context selection rules offline, on signals an evaluation kept.

An evaluation run with ``--keep-signals`` records, for each xl3m sample, every segment's signal
values (certainty measures, BM25, dense similarity, the fused arrival score), which segments
were in the bounded store when the question was asked, which segments hold the evidence and the
budget. Selection at ``ask`` is a pure function of those, so rules can be compared here in
seconds instead of re-running the model for an hour:

    xl3m-stream eval --task prose-paraphrase --length 65536 --samples 10 \\
        --method xl3m --no-read --keep-signals --json > run.json
    python benchmarks/fusion_offline.py run.json [more.json ...]

It prints, per rule and task, how many samples had their whole evidence selected. The rule
named ``engine`` is what the engine ships (it must reproduce the run's own selection, which is
checked and printed as ``agrees with the run``). Use it to choose a rule, then confirm with a
real run on other seeds: a rule chosen on these samples is not measured by them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xl3m_stream.relevance import fuse_at_ask, interleaved_rank_fusion, reciprocal_rank_fusion

Rule = Callable[[dict[str, list[float]]], list[float]]


def _lists(values: dict[str, list[float]], names: Sequence[str]) -> list[list[float]]:
    return [values[n] for n in names if n in values]


def _z(scores: Sequence[float]) -> list[float]:
    mean = statistics.fmean(scores)
    spread = statistics.pstdev(scores) or 1.0
    return [(x - mean) / spread for x in scores]


def _zsum(lists: Sequence[Sequence[float]]) -> list[float]:
    zs = [_z(x) for x in lists]
    return [sum(z[i] for z in zs) for i in range(len(lists[0]))]


def _zmax(lists: Sequence[Sequence[float]]) -> list[float]:
    zs = [_z(x) for x in lists]
    return [max(z[i] for z in zs) for i in range(len(lists[0]))]


def _weighted_interleave(lists: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    ranks = [[1 + sum(v > x[i] for v in x) for i in range(len(x))] for x in lists]
    rrf = reciprocal_rank_fusion(lists)
    return [-min(r[i] / w for r, w in zip(ranks, weights)) + rrf[i] for i in range(len(lists[0]))]


def _firsts_then(lists: Sequence[Sequence[float]], rest: Sequence[float]) -> list[float]:
    """Each signal's first choice ahead of everything, then ``rest`` orders the others."""
    firsts = {max(range(len(x)), key=lambda i: (x[i], i)) for x in lists}
    top = max(abs(v) for v in rest) + 1.0 if rest else 1.0
    return [v + (4 * top if i in firsts else 0.0) for i, v in enumerate(rest)]


SIGNALS = ("nll", "bm25_global", "dense")

RULES: dict[str, Rule] = {
    "engine": lambda v: fuse_at_ask(_lists(v, SIGNALS)),
    "zsum": lambda v: _zsum(_lists(v, SIGNALS)),
    "zmax": lambda v: _zmax(_lists(v, SIGNALS)),
    "firsts+zsum": lambda v: _firsts_then(_lists(v, SIGNALS), _zsum(_lists(v, SIGNALS))),
    "firsts+certainty": lambda v: _firsts_then(_lists(v, SIGNALS), _z(v["nll"])),
    "interleave-c2": lambda v: _weighted_interleave(_lists(v, SIGNALS), (2, 1, 1)),
    "certainty+dense": lambda v: interleaved_rank_fusion(_lists(v, ("nll", "dense"))),
    "interleave": lambda v: interleaved_rank_fusion(_lists(v, SIGNALS)),
    "rrf": lambda v: reciprocal_rank_fusion(_lists(v, SIGNALS)),
    "certainty": lambda v: list(v["nll"]),
    "lexical": lambda v: list(v["bm25_global"]),
    "dense": lambda v: list(v.get("dense", v["nll"])),
    "arrival": lambda v: list(v["arrival"]),
}


def select(fused: Sequence[float], seqs: Sequence[int], sizes: Sequence[int], budget: int) -> set[int]:
    """The engine's greedy fill: best first (ties: the later segment), skip what does not fit."""
    order = sorted(range(len(seqs)), key=lambda i: (fused[i], seqs[i]), reverse=True)
    chosen, left = set(), budget
    for i in order:
        if sizes[seqs[i]] <= left:
            chosen.add(seqs[i])
            left -= sizes[seqs[i]]
    return chosen


def recall(chosen: set[int], evidence: Sequence[Sequence[int]]) -> float:
    return sum(any(j in chosen for j in piece) for piece in evidence) / max(1, len(evidence))


def samples_of(paths: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        out += [s for s in report["samples"] if s["method"] == "xl3m" and s.get("signals")]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="eval --json outputs made with --keep-signals")
    ap.add_argument("--budget", type=int, help="key-context budget to simulate (default: the run's)")
    ap.add_argument("--all-candidates", action="store_true", help="rank every segment, not only the store's")
    ap.add_argument("--rules", help="comma-separated rules (default: all)")
    ap.add_argument("--show-misses", action="store_true", help="list each miss with its evidence's signal ranks")
    args = ap.parse_args(argv)
    samples = samples_of(args.reports)
    if not samples:
        print("no xl3m samples with signals in these reports (run eval with --keep-signals)", file=sys.stderr)
        return 2
    rules = args.rules.split(",") if args.rules else list(RULES)
    tasks = sorted({s["task"] for s in samples})
    print(f"{len(samples)} samples: " + ", ".join(f"{t} {sum(s['task'] == t for s in samples)}" for t in tasks))
    agree = 0
    table: dict[str, dict[str, list[float]]] = {r: {t: [] for t in tasks} for r in rules}
    misses: dict[str, list[str]] = {r: [] for r in rules}
    for s in samples:
        sig = s["signals"]
        seqs = list(range(len(sig["sizes"]))) if args.all_candidates else sorted(sig["store"])
        values = {k: [v[j] for j in seqs] for k, v in sig["values"].items()}
        budget = args.budget or sig["budget"]
        for rule in rules:
            got = recall(select(RULES[rule](values), seqs, sig["sizes"], budget), sig["evidence"])
            table[rule][s["task"]].append(got)
            if got < 1.0:
                misses[rule].append(f"{s['task']} seed {s['seed']}: ranks {s.get('signal_ranks')}")
        if not args.budget and not args.all_candidates and "engine" in rules:
            agree += table["engine"][s["task"]][-1] == s["selection_recall"]
    width = max(len(r) for r in rules)
    print(f"{'rule':<{width}}  " + "  ".join(f"{t:>16}" for t in tasks) + "       all")
    for rule in rules:
        cells = [table[rule][t] for t in tasks]
        every = [x for c in cells for x in c]
        line = "  ".join(f"{statistics.fmean(c):>16.2f}" for c in cells)
        print(f"{rule:<{width}}  {line}  {statistics.fmean(every):8.2f}")
    if not args.budget and not args.all_candidates and "engine" in rules:
        print(f"engine rule agrees with the run on {agree} of {len(samples)} samples")
    if args.show_misses:
        for rule in rules:
            for line in misses[rule]:
                print(f"  {rule} missed {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
