"""Agent memory on the tiny model: messages, documents, recall and answers, async and sync."""

from __future__ import annotations

import pytest
from helpers import FAST_RELEVANCE

from xl3m_stream import EngineConfig, InputError, KeyContext
from xl3m_stream.memory import MEMORY_DEFAULTS, AgentMemory, SyncAgentMemory

pytestmark = pytest.mark.anyio

FILLER = "The grass is green. The sky is blue. The sun is yellow."


def settings(model_dir, **changes):
    base = dict(
        model=str(model_dir),
        devices=["cpu"],
        segment_tokens=32,
        store_segments=8,
        max_new_tokens=4,
        dtype="float32",
        relevance=FAST_RELEVANCE,
    )
    base.update(changes)
    return base


async def test_async_memory_recall_and_answer(tiny_model_dir, anyio_backend) -> None:
    async with AgentMemory(**settings(tiny_model_dir)) as memory:
        assert memory.config.segment_cut == "lines"  # the memory defaults apply under overrides
        assert memory.config.reader_prompt == MEMORY_DEFAULTS["reader_prompt"]
        await memory.add("hello there", role="user")
        await memory.add("hi! how can I help you today?", role="assistant")
        await memory.extend([("user", "The pass key is 12345."), {"role": "assistant", "content": "noted"}])
        for _ in range(10):
            await memory.add(FILLER, role="user")
        await memory.add_document("The pass key is 777.\n" + FILLER, name="keys.txt")
        assert memory.messages == 14
        assert memory.tokens == memory.engine.stream_tokens > 0
        ctx = await memory.recall("What is the pass key?")
        assert isinstance(ctx, KeyContext) and ctx.question == "What is the pass key?"
        assert 0 < ctx.tokens <= memory.config.context_tokens + 16
        starts = [s.start for s in ctx.segments]
        assert starts == sorted(starts)
        metas = [s.meta for s in ctx.segments if s.meta]
        assert metas  # provenance: turns, roles and documents
        kinds = {key for m in metas for key in m}
        assert kinds & {"turn", "role", "document"}
        answer = await memory.answer("What is the pass key?")
        assert isinstance(answer.text, str) and answer.question == "What is the pass key?"


async def test_memory_metadata_of_messages_and_documents(tiny_model_dir, anyio_backend) -> None:
    async with AgentMemory(**settings(tiny_model_dir, store_segments=64, segment_tokens=16)) as memory:
        await memory.add("one", role="user")
        await memory.add_document("alpha beta gamma " * 8, name="greek.txt")
        await memory.engine.flush()
        entries = list(memory.engine.store)
        overlap = memory.engine.config.segment_overlap  # consecutive segments repeat this many tokens
        ids = [t for i, e in enumerate(entries) for t in e.segment.tokens[overlap if i else 0 :]]
        text = memory.engine.tokenizer.decode(ids)
        assert text.startswith("user: one\nDocument greek.txt:\nalpha beta")
        assert entries[0].segment.meta["role"] == "user"
        assert entries[-1].segment.meta == {"document": "greek.txt"}


async def test_memory_rejects_bad_input(tiny_model_dir, anyio_backend) -> None:
    async with AgentMemory(**settings(tiny_model_dir)) as memory:
        with pytest.raises(InputError):
            await memory.add(123)  # type: ignore[arg-type]
        with pytest.raises(InputError):
            await memory.add("x", role=" ")
        with pytest.raises(InputError):
            await memory.extend([("user",)])
        with pytest.raises(InputError):
            await memory.recall("")


def test_memory_takes_a_config(tiny_model_dir) -> None:
    config = EngineConfig(**settings(tiny_model_dir))
    memory = AgentMemory(config, store_segments=3)
    assert memory.config.store_segments == 3 and memory.config.segment_cut == "tokens"  # the config as given


def test_sync_memory(tiny_model_dir) -> None:
    with SyncAgentMemory(**settings(tiny_model_dir)) as memory:
        memory.add("The pass key is 12345.", role="user")
        memory.extend([("assistant", "noted"), ("user", FILLER)])
        memory.add_document(FILLER, name="sky.txt")
        assert memory.messages == 3 and memory.tokens > 0
        ctx = memory.recall("What is the pass key?")
        assert ctx.segments and ctx.tokens > 0
        assert isinstance(memory.answer("What is the pass key?").text, str)
    with pytest.raises(Exception, match="not running"):
        memory.recall("What is the pass key?")


def test_sync_memory_started_twice_stays_usable(tiny_model_dir) -> None:
    memory = SyncAgentMemory(**settings(tiny_model_dir)).start()
    with memory:
        assert memory.start() is memory
        memory.add("The pass key is 12345.", role="user")
        assert memory.recall("What is the pass key?").segments
    with pytest.raises(Exception, match="closed"):
        memory.start()
    memory.close()
