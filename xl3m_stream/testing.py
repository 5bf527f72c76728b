"""Tiny models built in code, for tests and examples that must not download anything.

``build_tiny_model(path)`` writes a random-weight Llama-shaped causal LM and a byte-level
BPE tokenizer (trained in a few milliseconds on a fixed corpus) as an ordinary Hugging Face
directory with safetensors weights, so the engine loads it through its normal loading path.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_WINDOW = 1024
"""Context window of the tiny model (``max_position_embeddings``)."""

_CORPUS = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "The pass key is 12345. Remember it. 12345 is the pass key. What is the pass key?",
    "2024-05-01T12:00:00Z INFO api request_id=abc123 GET /health 200 in 3 ms",
    "2024-05-01T12:00:01Z ERROR storage disk failure on /dev/sdb: I/O error",
    "Which service reported the disk failure? The answer is storage.",
    "user: hello there\nassistant: hi! how can I help you today?\n",
    "Numbers 0123456789 and punctuation .,;:!?()[]{}<>'\"-_/\\@#$%^&*+=~`|",
]


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``tokenizers.Tokenizer`` (GPT-2 style pre-tokenizer, like SmolLM2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    window: int = TINY_WINDOW,
    seed: int = 0,
    vocab_size: int = 512,
) -> Path:
    """Write a tiny random Llama-shaped model and its tokenizer to ``path``; return the path.

    ``vocab_size`` changes the tokenizer's merges and ids: two tiny models of different sizes
    stand for a scorer and a reader whose vocabularies differ."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=window,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "xl3m_tiny.json").write_text(json.dumps({"seed": seed, "window": window}))
    return out
