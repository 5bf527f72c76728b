"""The coordinator's own stages, each timed alone on one stream: what bounds scale-out.

With ``backend="ray"`` only the forward passes and their certainty maths move to the actors;
the engine's process keeps tokenising, cutting segments, decoding them for the lexical signal,
counting BM25 document frequencies and offering scores to the store. Each of those is timed
here on its own, single-threaded, over the same ``--tokens`` stream tokens (the default
tokenizer, 256-token segments); the slowest bounds the stream rate any number of workers can
reach. The certainty maths (done by an actor with Ray, by the engine's scoring thread locally)
is timed too, per batch of ``--batch-size`` segments and a 10-token question.

    python benchmarks/coordinator.py --tokens 400000 --json

The last stdout line (``--json``) holds each stage's tokens/s and segments/s and
``coordinator_tok_s``: the stages in series (1 / sum of 1 / rate), as one event loop runs them.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit, median, now, stream_text


def timed(fn: Any, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0 = now()
        fn()
        times.append(now() - t0)
    return median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=400_000)
    p.add_argument("--model", default="default", help="whose tokenizer (default: the default scorer's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from xl3m_stream import EngineConfig, models
    from xl3m_stream._engine.intake import Intake
    from xl3m_stream.relevance import LexicalIndex, term_counts
    from xl3m_stream.scoring import certainty
    from xl3m_stream.sources import DecodeStats
    from xl3m_stream.store import SegmentStore

    torch.set_num_threads(1)
    tok = models.load_tokenizer(models.resolve(args.model))
    config = EngineConfig(model=args.model, reader_model=None)
    text = stream_text(tok, args.tokens, seed=3)
    chunk = 1 << 15

    segments: list[Any] = []

    def intake() -> None:
        segments.clear()
        stage = Intake(config, tok, DecodeStats())
        for i in range(0, len(text), chunk):
            piece = text[i : i + chunk]
            ids, ends = stage.tokenize(piece)
            segments.extend(p.segment for p in stage.take_text(piece, None, ids, ends))
        ids, ends, pending = stage.flush_text()
        segments.extend(p.segment for p in pending)
        segments.extend(p.segment for p in stage.cut_tail())

    intake_s = timed(intake, args.repeat)
    n_tokens = sum(s.n_tokens for s in segments)
    n_segments = len(segments)

    texts: list[str] = []

    def decode() -> None:
        texts[:] = [tok.decode(list(s.tokens)) for s in segments]

    decode_s = timed(decode, args.repeat)

    def lexical() -> None:
        index = LexicalIndex()
        query = list(term_counts("Which town did the carpenter visit before the storm?"))
        for t in texts:
            terms = term_counts(t)
            index.score(query, terms)
            index.add(terms)

    lexical_s = timed(lexical, args.repeat)
    rng = random.Random(0)
    scores = [rng.gauss(0.0, 1.0) for _ in segments]

    def store() -> None:
        s = SegmentStore(config.store_segments)
        for seg, score in zip(segments, scores):
            s.offer(seg, score, scores={"nll": score, "bm25": score, "dense": score})

    store_s = timed(store, args.repeat)

    vocab = len(tok)
    logits = (torch.randn(args.batch_size, 10, vocab) * 4).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (10,))
    with torch.inference_mode():
        certainty(logits, targets)
        cert_s = timed(lambda: certainty(logits, targets), max(5, args.repeat))
    per_segment = n_tokens / max(n_segments, 1)

    def rates(seconds: float) -> dict[str, float]:
        return {"tok_s": round(n_tokens / seconds, 1), "segments_s": round(n_segments / seconds, 1)}

    stages = {"intake": intake_s, "decode": decode_s, "lexical": lexical_s, "store": store_s}
    result: dict[str, Any] = {name: rates(sec) for name, sec in stages.items()}
    result["coordinator_tok_s"] = round(n_tokens / sum(stages.values()), 1)
    cert_rate = args.batch_size / cert_s
    result["certainty_maths"] = {"segments_s": round(cert_rate, 1), "tok_s": round(cert_rate * per_segment, 1)}
    result.update(
        tokens=n_tokens,
        segments=n_segments,
        vocab=vocab,
        store_segments=config.store_segments,
        threads=1,
        cpu=cpu_model(),
    )
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
