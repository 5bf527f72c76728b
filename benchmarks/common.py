"""Shared pieces of the benchmark scripts: stream text, random-weight model shapes, timing."""

from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from typing import Any

SHAPES: dict[str, dict[str, int]] = {
    # Llama-2-7B (vocabulary of the tokenizer actually used, see random_model)
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
    ),
    # a near-free forward (1 layer, width 32): what is left of a run is the engine's own work,
    # so ingest.py --shape free measures the engine's ceiling, not a model's speed
    "free": dict(
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=8192,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
    ),
}


def stream_text(tokenizer: Any, tokens: int, seed: int = 0) -> str:
    """Seeded English prose of about ``tokens`` tokens (counted with ``tokenizer``)."""
    from xl3m_stream.evaluate.haystack import prose_units

    probe = prose_units(random.Random(seed + 1_000_003))
    sample = "".join(next(probe) for _ in range(200))
    per_char = len(tokenizer.encode(sample, add_special_tokens=False)) / len(sample)
    units = prose_units(random.Random(seed))
    parts: list[str] = []
    chars = 0
    while chars * per_char < tokens:
        unit = next(units)
        parts.append(unit)
        chars += len(unit)
    return "".join(parts)


def random_model(shape: str, vocab_size: int, device: str, dtype: Any) -> Any:
    """A Llama-architecture model of a real model's shape with random weights, built on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    config = LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False, **SHAPES[shape])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    return model


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 tensor-core peaks (the vendors' figures, without sparsity), by device name."""


def forward_flops_per_token(model: Any, seq_len: int) -> float:
    """FLOPs of one scoring forward per token: 2 x the weights every token meets (not the
    embedding table, not the LM head: logits are computed at the question's positions only)
    plus causal attention (QK^T and AV over seq_len / 2 keys on average)."""
    cfg = model.config
    out_emb = model.get_output_embeddings()
    skip = {id(p) for m in (model.get_input_embeddings(), out_emb) if m is not None for p in m.parameters()}
    weights = sum(p.numel() for p in model.parameters() if id(p) not in skip and p.dim() >= 2)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * (seq_len / 2)
    return 2.0 * weights + attention


def peak_flops(device: Any, given_tflops: float | None) -> float | None:
    """The device's peak FLOP/s: ``given_tflops`` if set, else a known GPU's bf16 peak, else None."""
    if given_tflops:
        return given_tflops * 1e12
    if getattr(device, "type", "") == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def cpu_model() -> str:
    """The CPU's model name with the flags that decide dtype choices (every figure names it)."""
    from xl3m_stream.evaluate.runner import cpu_description

    return cpu_description()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def now() -> float:
    return time.perf_counter()


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Human-readable lines on stderr; with --json, one JSON object as the last stdout line."""
    for key, value in result.items():
        if not isinstance(value, (list, dict)):
            print(f"{key}: {value}", file=sys.stderr)
    if as_json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
