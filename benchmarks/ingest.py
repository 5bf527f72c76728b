"""Ingest throughput through the whole engine against the raw model forward on the same tokens.

    python benchmarks/ingest.py [--tokens N] [--model M] [--json]
    python benchmarks/ingest.py --backend ray --workers 2 --tokens 4000 --repeat 3   # Ray vs local
    python benchmarks/ingest.py --shape free --tokens 200000 --json   # the engine's own ceiling
    python benchmarks/ingest.py --device cuda:0 --shape llama2-7b --dtype bfloat16 \\
        --batch-size 60 --segment-tokens 512 --compile --tokens 2000000 --json   # GPU

The raw forward gets the same batches the engine scores (same model object, dtype, batch
shape, question, ``logits_to_keep``), timed forward pass by forward pass, without the
engine: no tokenisation, segmentation, queueing or certainty maths, on a warm thread of its
own (as the engine's scoring is). With the dense signal on (the default), the engine runs a
second model on the device, the embedder, over every segment's passages: the raw pass runs it
too, on the same segments' texts (decoded before the timing), so ``ratio`` compares the engine
with the device work it asks for and shows the engine's own cost; ``ratio_vs_scorer`` compares
it with the scorer's forward alone (``scorer_tok_s``) and so includes what the dense signal
costs. Raw and engine runs alternate ``--repeat`` times, the order
flipping each time; ``ratio`` is the median of the per-pair ratios (each pair is measured
back to back, so slow drifts of a shared machine's load cancel), ``ratio_of_medians`` the
ratio of the two medians. The last stdout line (``--json``) holds ``engine_tok_s``,
``raw_tok_s``, ``ratio`` and the runs.

``--backend ray --workers N`` also runs an engine on the Ray backend (N scoring actors on a
local Ray) over the same tokens, in each pair next to the local engine: ``ray_tok_s``,
``ray_vs_local`` (median of the per-pair ratios ray/local), ``ray_runs``, and
``ray_call_overhead_ms`` (median round trip of a no-op actor call: Ray's cost per batch,
on top of shipping the token ids and the scores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model, emit, forward_flops_per_token, median, now, peak_flops, random_model, stream_text, sync

from xl3m_stream.workers import DeviceThreads

QUESTION = "Which town did the carpenter visit before the storm?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=20_000, help="stream tokens per timed run (default 20000)")
    p.add_argument("--model", default="default", help="model to load (ignored with --shape)")
    p.add_argument(
        "--shape",
        help="random weights of this shape instead: llama2-7b, qwen2.5-0.5b, smollm2-135m; "
        "free: a near-free forward, so the engine's own ceiling shows (engine_segments_s)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--segment-tokens", type=int, default=256)
    p.add_argument(
        "--segment-overlap",
        type=int,
        default=0,
        help="tokens consecutive segments share; the raw forward still counts every scored token, "
        "the engine counts stream tokens, so the ratio shows what overlap costs",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the scorer (static shapes)")
    p.add_argument("--device-concurrency", type=int, default=1, help="batches in flight per device")
    p.add_argument("--repeat", type=int, default=5, help="raw/engine pairs, alternating order (default 5)")
    p.add_argument(
        "--relevance",
        default="certainty,lexical,dense",
        help="relevance signals of the engine, comma-separated (default: all three, the engine's default)",
    )
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="ray: also time the Ray backend")
    p.add_argument("--workers", type=int, default=2, help="--backend ray: scoring actors (default 2)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak FLOP/s in TFLOP/s, for mfu (default: known GPUs' bf16 peak; a CPU's must be given)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.backend == "ray" and args.shape:
        p.error("--backend ray loads the model by name in each actor: not with --shape")
    import anyio

    result = anyio.run(run, args)
    emit(result, args.json)
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import anyio
    import torch

    from xl3m_stream import Engine, EngineConfig, models
    from xl3m_stream.evaluate.runner import cut_segments
    from xl3m_stream.scoring import build_batch

    config = EngineConfig(
        model=args.model,
        devices=[args.device],
        dtype=args.dtype,
        batch_size=args.batch_size,
        segment_tokens=args.segment_tokens,
        segment_overlap=args.segment_overlap,
        max_pending_segments=max(64, 4 * args.batch_size),
        compile="always" if args.compile else "never",
        device_concurrency=args.device_concurrency,
        question=QUESTION,
        relevance=[x.strip() for x in args.relevance.split(",") if x.strip()],
        reader_model=None,  # reading is not measured here: do not load the default reader
    )
    model = tokenizer = None
    if args.shape:
        tokenizer = models.load_tokenizer(models.resolve(args.model))
        dtype = models.pick_dtype(torch.device(args.device), args.dtype)
        model = random_model(args.shape, len(tokenizer), args.device, dtype)
    started = now()
    async with contextlib.AsyncExitStack() as stack:
        engine = await stack.enter_async_context(Engine(config, model=model, tokenizer=tokenizer))
        load_s = now() - started
        ray_engine, ray_load_s = None, 0.0
        if args.backend == "ray":
            started = now()
            ray_config = config.replace(backend="ray", workers=args.workers)
            ray_engine = await stack.enter_async_context(Engine(ray_config))
            ray_load_s = now() - started
        replica = engine.replicas[0]
        scorer, device = replica.scorer, replica.device
        text = stream_text(engine.tokenizer, args.tokens, seed=1)
        warm = stream_text(engine.tokenizer, args.batch_size * args.segment_tokens * 2, seed=2)

        # the raw forward's input: exactly the batches the engine will score
        segments = cut_segments(engine.tokenizer, text, engine.config)
        q_ids = scorer.encode_question(QUESTION)
        full = [s for s in segments if s.n_tokens == args.segment_tokens]
        pad_to = None
        if scorer.pad_to_segment is not None:
            pad_to = len(scorer.prefix) + args.segment_tokens + len(scorer.sep) + len(q_ids) - 1
        batches = [
            build_batch(
                [s.tokens for s in full[i : i + args.batch_size]],
                q_ids,
                prefix=scorer.prefix,
                sep=scorer.sep,
                pad_id=scorer.pad_id,
                pad_to=pad_to,
            )
            # full batches only: one shape, as the engine's compiled path pads short batches to
            for i in range(0, max(args.batch_size, len(full) - len(full) % args.batch_size), args.batch_size)
        ]
        raw_tokens = sum(len(b.input_ids) for b in batches) * args.segment_tokens
        # with the dense signal on, the device runs a second model: the embedder's pass over the
        # same segments' passages is part of the raw device work (decoded here, outside the timing)
        embedder = replica.embedder if "dense" in engine.config.relevance else None
        batch_texts = [
            [engine.tokenizer.decode(list(s.tokens)) for s in full[i : i + args.batch_size]]
            for i in range(0, len(batches) * args.batch_size, args.batch_size)
        ]

        def raw_pass() -> tuple[float, float]:
            """Seconds in the scorer's forwards and in the embedder's passes, batch by batch."""
            scoring = embedding = 0.0
            with torch.inference_mode():
                for b, texts in zip(batches, batch_texts):
                    sync(device)
                    t0 = now()
                    out = scorer.forward(
                        input_ids=b.input_ids.to(device),
                        attention_mask=b.attention_mask.to(device),
                        position_ids=b.position_ids.to(device),
                        logits_to_keep=b.n_keep,
                        use_cache=False,
                    )
                    del out
                    sync(device)
                    t1 = now()
                    scoring += t1 - t0
                    if embedder is not None:
                        embedder.encode_passages(texts)
                        sync(device)
                        embedding += now() - t1
            return scoring, embedding

        # warm up both paths (compilation, allocator, caches) before timing
        for e in [engine] if ray_engine is None else [engine, ray_engine]:
            await e.feed(warm)
            await e.flush()
        raw_thread = DeviceThreads("raw-forward", 1)
        await raw_thread.run(lambda: raw_pass_one(scorer, batches[:1], device))
        if embedder is not None:
            await raw_thread.run(lambda: embedder.encode_passages(batch_texts[0]))

        async def engine_pass(e: Any = engine) -> float:
            before = e.stream_tokens
            t0 = now()
            step = 1 << 15
            for i in range(0, len(text), step):
                await e.feed(text[i : i + step])
            await e.flush()
            return (e.stream_tokens - before) / (now() - t0)

        raw_runs, scorer_runs, engine_runs, pair_ratios, scorer_ratios = [], [], [], [], []
        ray_runs, ray_ratios = [], []

        async def raw_run() -> None:
            scoring, embedding = await raw_thread.run(raw_pass)
            raw_runs.append(raw_tokens / (scoring + embedding))
            scorer_runs.append(raw_tokens / scoring)

        for k in range(args.repeat):
            if k % 2 == 0:
                await raw_run()
                engine_runs.append(await engine_pass())
                if ray_engine is not None:
                    ray_runs.append(await engine_pass(ray_engine))
            else:
                if ray_engine is not None:
                    ray_runs.append(await engine_pass(ray_engine))
                engine_runs.append(await engine_pass())
                await raw_run()
            pair_ratios.append(engine_runs[-1] / raw_runs[-1])
            scorer_ratios.append(engine_runs[-1] / scorer_runs[-1])
            print(
                f"pair {k + 1}: engine {engine_runs[-1]:.1f}, raw {raw_runs[-1]:.1f} tokens/s "
                f"(scorer's forward alone {scorer_runs[-1]:.1f})",
                file=sys.stderr,
            )
            if ray_engine is not None:
                ray_ratios.append(ray_runs[-1] / engine_runs[-1])
                print(f"  ray ({args.workers} workers) {ray_runs[-1]:.1f} tokens/s", file=sys.stderr)
        raw_thread.close()
        raw_thread.join()
        stats = engine.stats()
        result = {
            "engine_tok_s": round(median(engine_runs), 1),
            "engine_segments_s": round(median(engine_runs) / (args.segment_tokens - args.segment_overlap), 1),
            "raw_tok_s": round(median(raw_runs), 1),
            "ratio": round(median(pair_ratios), 4),
            "ratio_of_medians": round(median(engine_runs) / median(raw_runs), 4),
            "pair_ratios": [round(x, 4) for x in pair_ratios],
            "engine_runs": [round(x, 1) for x in engine_runs],
            "raw_runs": [round(x, 1) for x in raw_runs],
            "raw_includes_embedder": embedder is not None,
            "scorer_tok_s": round(median(scorer_runs), 1),
            "ratio_vs_scorer": round(median(scorer_ratios), 4),
            "scorer_runs": [round(x, 1) for x in scorer_runs],
            "tokens": args.tokens,
            "model": args.shape or engine.model_name,
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "dtype": str(replica.scoring_model.dtype).replace("torch.", ""),
            "batch_size": args.batch_size,
            "segment_tokens": args.segment_tokens,
            "segment_overlap": args.segment_overlap,
            "question_tokens": len(q_ids),
            "compile": args.compile,
            "device_concurrency": args.device_concurrency,
            "load_s": round(load_s, 2),
            "segments_scored": stats.segments_scored,
            "threads": torch.get_num_threads(),
            "relevance": list(engine.config.relevance),
            "cpu": cpu_model(),
        }
        flops = forward_flops_per_token(scorer.model, args.segment_tokens + len(q_ids) + len(scorer.sep))
        peak = peak_flops(device, args.peak_tflops)
        result["gflop_per_token"] = round(flops / 1e9, 3)
        if peak is not None:
            # model FLOP utilisation: stream tokens/s x FLOPs per token / peak (raw and engine)
            result["mfu_raw"] = round(median(scorer_runs) * flops / peak, 4)
            result["mfu_engine"] = round(median(engine_runs) * flops / peak, 4)
            result["peak_tflops"] = round(peak / 1e12, 1)
        if ray_engine is not None:
            result.update(
                backend="ray",
                workers=args.workers,
                ray_tok_s=round(median(ray_runs), 1),
                ray_vs_local=round(median(ray_ratios), 4),
                ray_runs=[round(x, 1) for x in ray_runs],
                ray_load_s=round(ray_load_s, 2),
                ray_batches=ray_engine.stats().batches,
                ray_call_overhead_ms=round(await anyio.to_thread.run_sync(ray_round_trip_ms, ray_engine), 3),
            )
    return result


def ray_round_trip_ms(engine: Any, calls: int = 50) -> float:
    """Median round trip of a no-op call to the engine's first scoring actor, in ms."""
    import ray

    actor = engine._dispatch.workers.workers[0].actor
    times = []
    for _ in range(calls):
        t0 = now()
        ray.get(actor.ready.remote())
        times.append((now() - t0) * 1000)
    return median(times)


def raw_pass_one(scorer: Any, batches: list[Any], device: Any) -> None:
    import torch

    with torch.inference_mode():
        for b in batches:
            scorer.forward(
                input_ids=b.input_ids.to(device),
                attention_mask=b.attention_mask.to(device),
                position_ids=b.position_ids.to(device),
                logits_to_keep=b.n_keep,
                use_cache=False,
            )
        sync(device)


if __name__ == "__main__":
    sys.exit(main())
