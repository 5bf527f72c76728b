"""The scoring forward on this machine: batch shape, dtype, ``torch.compile`` and int8, swept.

For each variant of the scorer (``--variants``: ``fp32``, ``bf16``, ``compiled`` = the
``--dtype auto`` model under ``torch.compile(dynamic=False)``, ``int8`` = fp32 with dynamic int8
quantisation of the decoder's linear layers, the LM head left in fp32) and each batch shape
(``--segment-tokens`` x ``--batch-sizes``), the raw scoring forward the engine runs (left-padded
segments, the question appended, logits only at the question's positions, ``inference_mode``) is
timed for about ``--seconds`` per point, ``--repeat`` times (median), on one warm thread.
Printed per point: tokens/s and the fraction of the CPU's measured matmul peak (MFU: the
forward's FLOPs per token x tokens/s, over a large square matmul's FLOP/s in the same dtype on
the same threads; pass ``--peak-tflops`` for a datasheet figure instead).

Ranking quality (``--quality N``): every variant scores the segments of N samples each of the
passkey, prose-lexical and prose-paraphrase tasks against their questions by the engine's
certainty measure; printed per variant: the evidence segment's rank in each sample and the
Spearman correlation of its scores with the first variant's (median over samples). A faster
variant is only worth having at equal ranks.

    python benchmarks/forward_shapes.py --json
    python benchmarks/forward_shapes.py --variants fp32,bf16,int8 --segment-tokens 256 --batch-sizes 8 --quality 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit, forward_flops_per_token, median, stream_text

QUESTION = "Which town did the carpenter visit before the storm?"
VARIANTS = ("fp32", "bf16", "compiled", "int8")
QUALITY_TASKS = ("passkey", "prose-lexical", "prose-paraphrase")


def build_variant(name: str, spec: str) -> tuple[Any, Any, Any]:
    """(scorer, model, dtype) for one variant of the scoring model."""
    import torch

    from xl3m_stream import models
    from xl3m_stream.scoring import Scorer

    cpu = torch.device("cpu")
    if name == "fp32":
        loaded = models.load(spec, cpu, dtype="float32")
        return Scorer(loaded.model, loaded.tokenizer), loaded.model, torch.float32
    if name == "bf16":
        loaded = models.load(spec, cpu, dtype="bfloat16")
        return Scorer(loaded.model, loaded.tokenizer), loaded.model, torch.bfloat16
    if name == "compiled":
        loaded = models.load(spec, cpu, dtype="auto")
        compiled = torch.compile(loaded.model, dynamic=False)
        # pad_to_segment is set per shape by the caller (one compiled graph per shape)
        return Scorer(loaded.model, loaded.tokenizer, compiled=compiled), loaded.model, loaded.dtype
    if name == "int8":
        loaded = models.load(spec, cpu, dtype="float32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice
            # the decoder's linear layers; the LM head stays fp32 (it writes the logits the
            # certainty measures are made of)
            torch.ao.quantization.quantize_dynamic(
                loaded.model.get_decoder(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
        return Scorer(loaded.model, loaded.tokenizer), loaded.model, torch.float32
    raise SystemExit(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}")


def matmul_peak(dtype: Any, size: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on this thread's torch threads (the
    practical peak the forward is measured against)."""
    import torch

    a = torch.randn(size, size, dtype=torch.float32).to(dtype)
    b = torch.randn(size, size, dtype=torch.float32).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    runs = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(runs) < 3:
        t0 = time.perf_counter()
        torch.mm(a, b)
        runs.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(runs)


def time_shape(scorer: Any, tokenizer: Any, seg: int, batch: int, seconds: float, repeat: int) -> list[float]:
    """Tokens/s of the raw scoring forward at one batch shape, ``repeat`` timed runs."""
    import torch

    from xl3m_stream.scoring import build_batch

    ids = tokenizer.encode(stream_text(tokenizer, seg * batch * 4, seed=3), add_special_tokens=False)
    rows = [tuple(ids[i * seg : (i + 1) * seg]) for i in range(batch)]
    q_ids = scorer.encode_question(QUESTION)
    b = build_batch(rows, q_ids, prefix=scorer.prefix, sep=scorer.sep, pad_id=scorer.pad_id)

    def once() -> None:
        scorer.forward(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            position_ids=b.position_ids,
            logits_to_keep=b.n_keep,
            use_cache=False,
        )

    with torch.inference_mode():
        for _ in range(2):  # warm-up (and compilation)
            once()
        runs = []
        for _ in range(repeat):
            n, t0 = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t0 < seconds:
                once()
                n += 1
            runs.append(n * seg * batch / (time.perf_counter() - t0))
    return runs


def relevance_scores(scorer: Any, samples: list[Any], measure: str) -> list[list[float]]:
    """Each sample's segments scored against its question by ``measure`` (higher = more relevant)."""
    out = []
    for sample, segments, _texts in samples:
        prepared = scorer.prepare(scorer.encode_question(sample.question))
        values: list[float] = []
        for i in range(0, len(segments), 8):
            rows = [s.tokens for s in segments[i : i + 8]]
            values += [d[measure] for d in scorer.score(rows, prepared)]
        out.append(values)
    return out


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v: list[float]) -> list[int]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0] * len(v)
        for k, i in enumerate(order):
            r[i] = k
        return r

    rx, ry = ranks(x), ranks(y)
    n = len(x)
    d2 = sum((a - b) ** 2 for a, b in zip(rx, ry))
    return 1 - 6 * d2 / (n * (n * n - 1)) if n > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--variants", default="fp32,bf16,compiled,int8", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--segment-tokens", default="128,256,512", help="segment lengths swept (comma-separated)")
    p.add_argument("--batch-sizes", default="1,4,8,16", help="batch sizes swept (comma-separated)")
    p.add_argument("--compiled-shapes", default="256x8", help="shapes the compiled variant is timed at (SxB,...)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run (default 3)")
    p.add_argument("--repeat", type=int, default=3, help="runs per point, median reported (default 3)")
    p.add_argument("--quality", type=int, default=0, help="samples per task for the ranking check (default 0: off)")
    p.add_argument("--quality-length", type=int, default=8192, help="tokens per quality sample (default 8192)")
    p.add_argument("--peak-tflops", type=float, help="the CPU's peak in TFLOP/s (default: a measured matmul)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from xl3m_stream import EngineConfig
    from xl3m_stream.evaluate.runner import cut_segments
    from xl3m_stream.evaluate.tasks import make_sample

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    segs = [int(x) for x in args.segment_tokens.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")]
    compiled_shapes = [tuple(int(v) for v in s.split("x")) for s in args.compiled_shapes.split(",") if s]
    result: dict[str, Any] = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "model": args.model}
    points: list[dict[str, Any]] = []
    peaks: dict[str, float] = {}
    quality: dict[str, Any] = {}
    reference: list[list[float]] | None = None
    samples: list[Any] = []
    for name in variants:
        started = time.perf_counter()
        scorer, model, dtype = build_variant(name, args.model)
        print(f"{name}: loaded in {time.perf_counter() - started:.1f} s ({dtype})", file=sys.stderr)
        key = str(dtype).removeprefix("torch.")
        if key not in peaks:
            peaks[key] = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(dtype)
            print(f"matmul peak {key}: {peaks[key] / 1e9:.1f} GFLOP/s", file=sys.stderr)
        shapes = compiled_shapes if name == "compiled" else [(s, b) for s in segs for b in batches]
        for seg, batch in shapes:
            if name == "compiled":
                scorer.pad_to_segment = seg
            t0 = time.perf_counter()
            runs = time_shape(scorer, scorer.tokenizer, seg, batch, args.seconds, args.repeat)
            tok_s = median(runs)
            flops = forward_flops_per_token(model, seg + 12)
            point = {
                "variant": name,
                "dtype": key,
                "segment_tokens": seg,
                "batch_size": batch,
                "tok_s": round(tok_s, 1),
                "runs": [round(r, 1) for r in runs],
                # int8 matmuls are not measured against a float peak
                "mfu": None if name == "int8" else round(flops * tok_s / peaks[key], 4),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            points.append(point)
            print(
                f"  {name} {seg}x{batch}: {tok_s:,.0f} tokens/s (runs {min(runs):,.0f}-{max(runs):,.0f}), "
                f"MFU {point['mfu']}",
                file=sys.stderr,
            )
        if args.quality and name != "compiled":  # compiled computes what its dtype's eager model does
            if not samples:
                config = EngineConfig(model=args.model, reader_model=None)
                tok = scorer.tokenizer

                def count(text: str, tok: Any = tok) -> int:
                    return len(tok.encode(text, add_special_tokens=False))

                for task in QUALITY_TASKS:
                    for seed in range(args.quality):
                        sample = make_sample(task, length=args.quality_length, seed=seed, count_tokens=count)
                        segments = cut_segments(tok, sample.context, config)
                        texts = [tok.decode(list(s.tokens)) for s in segments]
                        samples.append((sample, segments, texts))
            scores = relevance_scores(scorer, samples, EngineConfig().measure)
            quality[name] = _quality(samples, scores, reference)
            if reference is None:
                reference = scores
            print(f"  {name} quality: {quality[name]}", file=sys.stderr)
        del scorer, model
    result.update(peak_gflops={k: round(v / 1e9, 1) for k, v in peaks.items()}, points=points)
    if quality:
        result["quality"] = quality
    emit(result, args.json)
    return 0


def _quality(samples: list[Any], scores: list[list[float]], reference: list[list[float]] | None) -> dict[str, Any]:
    from xl3m_stream.evaluate.metrics import evidence_rank

    ranks: dict[str, list[int | None]] = {}
    for (sample, _segments, texts), values in zip(samples, scores):
        order = sorted(range(len(texts)), key=lambda j: (-values[j], -j))
        ranks.setdefault(sample.task, []).append(evidence_rank(sample, [texts[j] for j in order]))
    out: dict[str, Any] = {"evidence_rank": ranks}
    if reference is not None:
        out["spearman_vs_first"] = round(median([spearman(a, b) for a, b in zip(scores, reference)]), 4)
    return out


if __name__ == "__main__":
    sys.exit(main())
