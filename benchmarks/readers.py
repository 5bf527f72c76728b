"""Which reader answers best from the same key contexts? Selection fixed, reading isolated.

For every sample of the real-text tasks (prose-lexical, prose-paraphrase, log-real) one key
context is built once, the way the engine builds one: the stream is cut into the default
scorer's segments, the segment holding the evidence goes in with the BM25-best other segments
(real distractors: they share the question's words) up to the key-context budget, spliced in
stream order with gap markers. Every reader then answers from exactly that text, through its
own tokenizer and prompt (``xl3m_stream.inference.Reader``). Printed per reader and answer
style: answer accuracy per task, median answer latency, load time and the CPU.

    python benchmarks/readers.py --samples 10 --json
    python benchmarks/readers.py --reader qwen2.5-coder-0.5b --style short --samples 3
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

READERS = ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TASKS = ("prose-lexical", "prose-paraphrase", "log-real")


def build_contexts(tasks: list[str], samples: int, length: int, budget: int) -> list[dict[str, Any]]:
    """One fixed key context per sample (see the module docstring)."""
    from xl3m_stream import EngineConfig, models
    from xl3m_stream.evaluate.baselines import rank_bm25
    from xl3m_stream.evaluate.metrics import contains_evidence
    from xl3m_stream.evaluate.runner import cut_segments
    from xl3m_stream.evaluate.tasks import make_sample
    from xl3m_stream.inference import assemble
    from xl3m_stream.store import StoreEntry

    tok = models.load_tokenizer(models.resolve("default"))
    config = EngineConfig()

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    out = []
    for task in tasks:
        for i in range(samples):
            sample = make_sample(task, length=length, seed=i, count_tokens=count)
            segments = cut_segments(tok, sample.context, config)
            texts = [tok.decode(list(s.tokens)) for s in segments]
            holding = [j for j, t in enumerate(texts) if contains_evidence(sample, t)]
            if not holding:
                continue
            ranking = rank_bm25(texts, sample.question)
            order = [holding[0]] + sorted(
                (j for j in range(len(segments)) if j != holding[0]), key=lambda j: -ranking[j]
            )
            chosen, used = [], 0
            for j in order:
                if used + segments[j].n_tokens <= budget:
                    chosen.append(j)
                    used += segments[j].n_tokens
            entries = [StoreEntry(segment=segments[j], score=0.0) for j in sorted(chosen)]
            ctx = assemble(
                entries,
                [],
                0,
                tokenizer=tok,
                question=sample.question,
                budget=budget,
                stream_tokens=len(sample.context),
                count=count,
            )
            out.append({"task": task, "seed": i, "sample": sample, "context": ctx.text})
    return out


def run_reader(name: str, styles: list[str], contexts: list[dict[str, Any]], max_new: int) -> list[dict[str, Any]]:
    import torch

    from xl3m_stream import models
    from xl3m_stream.evaluate.metrics import score_answer
    from xl3m_stream.inference import Reader

    t0 = time.perf_counter()
    loaded = models.load(name, torch.device("cpu"), dtype="auto")
    load_s = time.perf_counter() - t0
    rows = []
    has_chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    for style in styles if has_chat else ["plain"]:
        answer_style = "free" if style == "free" else "short"
        prompt_style = "plain" if style == "plain" else "auto"
        reader = Reader(
            loaded.model, loaded.tokenizer, window=loaded.window, prompt_style=prompt_style, answer_style=answer_style
        )
        results = []
        for c in contexts:
            sample = c["sample"]
            prompt = reader.prompt(c["context"], sample.question)
            t1 = time.perf_counter()
            text = "".join(reader.generate(prompt, max_new_tokens=max_new, stop=reader.stop_for(sample.question)))
            seconds = time.perf_counter() - t1
            ok = score_answer(sample, text)
            results.append({"task": c["task"], "seed": c["seed"], "ok": ok, "answer": text, "seconds": seconds})
            print(f"{name} {style} {c['task']} {c['seed']}: {ok:.0f} {text.strip()[:70]!r}", file=sys.stderr)
        by_task = {t: [r["ok"] for r in results if r["task"] == t] for t in dict.fromkeys(r["task"] for r in results)}
        rows.append(
            {
                "reader": name,
                "style": style,
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "accuracy": {t: round(statistics.fmean(v), 3) for t, v in by_task.items()},
                "overall": round(statistics.fmean(r["ok"] for r in results), 3),
                "samples": len(results),
                "median_answer_s": round(statistics.median(r["seconds"] for r in results), 2),
                "load_s": round(load_s, 1),
                "answers": results,
            }
        )
    del loaded
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reader", action="append", help=f"reader alias (repeatable; default: {', '.join(READERS)})")
    p.add_argument("--style", action="append", choices=["short", "free", "plain"], help="default: short and free")
    p.add_argument("--task", action="append", choices=TASKS)
    p.add_argument("--samples", type=int, default=10, help="samples per task (default 10)")
    p.add_argument("--length", type=int, default=16384, help="haystack tokens (the context is the same size)")
    p.add_argument("--budget", type=int, default=512, help="key-context tokens (default 512, the engine's)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    contexts = build_contexts(args.task or list(TASKS), args.samples, args.length, args.budget)
    rows: list[dict[str, Any]] = []
    for name in args.reader or READERS:
        rows += run_reader(name, args.style or ["short", "free"], contexts, args.max_new_tokens)
    result = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "samples_per_task": args.samples,
        "budget": args.budget,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    for r in rows:
        acc = "  ".join(f"{t} {a:.2f}" for t, a in r["accuracy"].items())
        print(
            f"{r['reader']:<24} {r['style']:<6} {r['dtype']:<9} {acc}  overall {r['overall']:.2f}  "
            f"answer {r['median_answer_s']:.2f} s  load {r['load_s']:.1f} s",
            file=sys.stderr,
        )
    print(f"cpu: {result['cpu']}, {result['threads']} threads, {result['seconds']} s", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
