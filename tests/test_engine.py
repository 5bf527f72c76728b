"""The async engine on a tiny random model: intake, backpressure, cancellation, concurrency, faults."""

from __future__ import annotations

import threading

import anyio
import pytest
from helpers import tiny_config

from xl3m_stream import (
    Engine,
    EngineConfig,
    ErrorEvent,
    InputError,
    SegmentEvicted,
    SegmentKept,
    SegmentScored,
    SyncEngine,
)
from xl3m_stream.errors import EngineClosedError

pytestmark = pytest.mark.anyio

TEXT = "".join(f"line {i}: The grass is green. The sky is blue. The sun is yellow.\n" for i in range(60))


def config(model_dir, **changes) -> EngineConfig:
    return tiny_config(model_dir, **changes)


def drain_events(stream) -> list:
    out = []
    while stream._buffer:
        out.append(stream._buffer.popleft())
    return out


async def test_feed_flush_ask_end_to_end(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        events = engine.events()
        taken = await engine.process([TEXT[:500], TEXT[500:], "The pass key is 12345."])
        stats = engine.stats()
        assert taken == stats.tokens_in == engine.stream_tokens > 0
        assert stats.segments_scored == stats.segments_cut > 6
        assert stats.pending_segments == 0 and stats.inflight_batches == 0
        assert stats.store_segments == 6  # bounded
        answer = await engine.ask("What is the pass key?")
        starts = [s.start for s in answer.segments]
        assert starts == sorted(starts)
        assert all(s.end > s.start and s.text for s in answer.segments)
        assert sum(s.end - s.start for s in answer.segments) <= 160  # budget: segment tokens
        assert answer.rescored == 0  # scored against this very question on arrival
        assert answer.timings.total_s >= answer.timings.wait_s
        seen = drain_events(events)
        scored = [e for e in seen if isinstance(e, SegmentScored)]
        kept = {e.seq for e in seen if isinstance(e, SegmentKept)}
        evicted = {e.seq for e in seen if isinstance(e, SegmentEvicted)}
        assert len(scored) == stats.segments_scored
        assert {e.segment.seq for e in engine.store} == kept - evicted
        # segments tile the stream: each starts the configured overlap before the last one ended
        overlap = engine.config.segment_overlap
        assert overlap == 32 // 8  # "auto" resolved at start
        ordered = sorted(scored, key=lambda e: e.seq)
        assert ordered[0].start == 0 and ordered[-1].end == stats.tokens_in
        assert all(b.start == a.end - overlap for a, b in zip(ordered, ordered[1:]))


async def test_chunking_does_not_change_segments(tiny_model_dir, anyio_backend) -> None:
    results = []
    for pieces in ([TEXT], [TEXT[i : i + 7] for i in range(0, len(TEXT), 7)], list(TEXT[:300]) + [TEXT[300:]]):
        async with Engine(config(tiny_model_dir)) as engine:
            events = engine.events()
            await engine.process(pieces)
            # the model's own score: the fused arrival score is a z-score that magnifies float noise
            scored = sorted(
                (e.seq, e.start, e.end, round(e.scores["nll"], 4))
                for e in drain_events(events)
                if isinstance(e, SegmentScored)
            )
            results.append(scored)
    assert results[0] == results[1] == results[2]


class Gate:
    """Blocks the scorer of a replica until opened; counts calls."""

    def __init__(self, replica) -> None:
        self.opened = threading.Event()
        self.calls = 0
        self._score = replica.scorer.score
        replica.scorer.score = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.opened.wait(timeout=30)
        return self._score(*args, **kwargs)


async def test_backpressure_blocks_feed_until_scoring_catches_up(tiny_model_dir, anyio_backend) -> None:
    cfg = config(tiny_model_dir, batch_size=1, max_pending_segments=2, question=None)
    async with Engine(cfg) as engine:
        gate = Gate(engine.replicas[0])
        done = anyio.Event()

        async def feeder() -> None:
            for i in range(0, len(TEXT), 40):
                await engine.feed(TEXT[i : i + 40])
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feeder)
            with anyio.move_on_after(1.0):
                await done.wait()
            assert not done.is_set(), "feed must wait while scoring is stalled"
            assert engine.stats().pending_segments <= 2 + 2  # high-water mark plus one feed's segments
            gate.opened.set()
            with anyio.fail_after(60):
                await done.wait()
        await engine.flush()
        assert engine.stats().segments_scored == engine.stats().segments_cut


async def test_cancelled_feed_loses_nothing(tiny_model_dir, anyio_backend) -> None:
    cfg = config(tiny_model_dir, batch_size=1, max_pending_segments=1)
    async with Engine(cfg) as engine:
        gate = Gate(engine.replicas[0])
        events = engine.events()
        with anyio.move_on_after(0.5) as scope:
            await engine.feed(TEXT)  # blocks on backpressure, then is cancelled
        assert scope.cancelled_caught
        gate.opened.set()
        await engine.feed("The pass key is 12345.")
        await engine.flush()
        scored = sorted((e for e in drain_events(events) if isinstance(e, SegmentScored)), key=lambda e: e.seq)
        assert scored[0].start == 0 and scored[-1].end == engine.stream_tokens
        overlap = engine.config.segment_overlap
        assert all(b.start == a.end - overlap for a, b in zip(scored, scored[1:]))
        decoded = engine.tokenizer.decode(
            [t for i, e in enumerate(scored) for t in _tokens(engine, e)[overlap if i else 0 :]]
        )
        assert decoded == TEXT + "The pass key is 12345."
        answer = await engine.ask("What is the pass key?")
        assert answer.segments


def _tokens(engine, event) -> tuple[int, ...]:
    entry = engine.store.get(event.seq)
    if entry is not None:
        return entry.segment.tokens
    return _tokens.cache[event.seq]


@pytest.fixture(autouse=True)
def _token_cache(monkeypatch):
    """Every segment's tokens as it is queued for scoring (events carry offsets, not tokens)."""
    _tokens.cache = {}
    from xl3m_stream._engine.queue import ScoringQueue

    original = ScoringQueue.put

    def spy(self, items):
        items = list(items)
        for p in items:
            _tokens.cache[p.segment.seq] = p.segment.tokens
        return original(self, items)

    monkeypatch.setattr(ScoringQueue, "put", spy)


async def test_cancelling_ask_stream_leaves_engine_usable(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir, max_new_tokens=20, stop=["\u0000"])) as engine:
        await engine.process([TEXT])
        stream = engine.ask_stream("What is the pass key?")
        async for _piece in stream:
            break
        await stream.aclose()
        with anyio.move_on_after(0.01):
            await engine.ask("What is the pass key?")
        answer = await engine.ask("What is the pass key?")
        assert isinstance(answer.text, str)
        assert engine.stats().inflight_batches == 0


async def test_many_concurrent_asks_while_feeding(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        answers = []

        async def ask(i: int) -> None:
            answers.append(await engine.ask("What is the pass key?" if i % 2 else "Which line is green?"))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(ask, i)
                await engine.feed(TEXT[i * 200 : (i + 1) * 200])
        assert len(answers) == 8
        for a in answers:
            starts = [s.start for s in a.segments]
            assert starts == sorted(starts)
            assert sum(s.end - s.start for s in a.segments) <= 160
        assert engine.stats().asks == 8


async def test_scoring_fault_is_retried_then_reported(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir, batch_size=4)) as engine:
        replica = engine.replicas[0]
        real = replica.scorer.score
        failures = {"left": 1}

        def flaky(segments, question):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise RuntimeError("CUDA out of memory (simulated)")
            return real(segments, question)

        replica.scorer.score = flaky
        events = engine.events()
        await engine.process([TEXT[:800]])
        got = drain_events(events)
        errors = [e for e in got if isinstance(e, ErrorEvent)]
        assert errors and errors[0].retrying
        assert engine.failed_segments == []
        assert engine.stats().segments_scored == engine.stats().segments_cut  # retried, nothing lost

        def broken(segments, question):
            raise RuntimeError("device lost (simulated)")

        replica.scorer.score = broken
        before = engine.stats().segments_cut
        await engine.process([TEXT[800:1600]])
        lost = engine.stats().segments_cut - before
        assert len(engine.failed_segments) == lost > 0  # kept aside, not silently dropped
        final = [e for e in drain_events(events) if isinstance(e, ErrorEvent) and not e.retrying]
        assert final and sorted(final[-1].seqs)
        replica.scorer.score = real
        await engine.process([TEXT[1600:2000]])  # the engine goes on
        assert engine.stats().pending_segments == 0


async def test_rolling_question_tail_and_local_window(tiny_model_dir, anyio_backend) -> None:
    cfg = config(tiny_model_dir, question=None, local_window_tokens=16, question_tokens=8)
    async with Engine(cfg) as engine:
        await engine.feed(TEXT[:1000])
        await engine.feed("The pass key is")  # no flush: the tail is not a segment yet
        ctx = await engine.key_context()
        assert ctx.question.endswith("The pass key is")
        assert ctx.segments[-1].local and ctx.segments[-1].end == engine.stream_tokens
        answer = await engine.ask(rescore="always")
        assert answer.rescored == engine.stats().store_segments
        assert answer.question == ctx.question


async def test_bad_input_is_refused_clearly(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir)) as engine:
        with pytest.raises(InputError, match="token id"):
            await engine.feed([1, 2, -3])
        with pytest.raises(InputError, match="token id"):
            await engine.feed([10**9])
        with pytest.raises(InputError):
            await engine.feed(3.5)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="max_question_tokens"):
            await engine.ask("why " * 400)
        with pytest.raises(InputError, match="nothing has been fed"):
            await engine.ask()
        with pytest.raises(InputError):
            await engine.ask("   ")
        await engine.feed(b"caf\xc3")  # ends inside a UTF-8 character
        await engine.feed(b"\xa9 ok\n")  # the split character survives across feeds
        await engine.flush()
        assert engine.decode_stats.replaced == 0
    with pytest.raises(EngineClosedError):
        await engine.feed("after close")


async def test_validation_edges_are_clear_errors(tiny_model_dir, anyio_backend) -> None:
    from xl3m_stream.segment import Segment
    from xl3m_stream.sources import TextChunk

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    cycle: dict = {}
    cycle["self"] = cycle
    async with Engine(config(tiny_model_dir)) as engine:
        await engine.feed(TEXT[:400])
        for bad in (-5, 0, 10**6, 2.5, True):
            with pytest.raises(InputError, match="max_new_tokens"):
                await engine.ask("What is the pass key?", max_new_tokens=bad)
            with pytest.raises(InputError, match="max_new_tokens"):
                async for _ in engine.ask_stream("What is the pass key?", max_new_tokens=bad):
                    pass
        good = Segment(seq=0, start=0, end=3, tokens=(1, 2, 3))
        for tokens in ((1, 99999, 3), (1, -1, 3)):
            bad_segment = Segment(seq=1, start=3, end=6, tokens=tokens)
            with pytest.raises(InputError, match="token id"):
                await engine.answer_with([good, bad_segment], "What is the pass key?")
        with pytest.raises(InputError, match="max_new_tokens"):
            await engine.answer_with([good], "What is the pass key?", max_new_tokens=-5)
        for meta in ({"a": deep}, cycle, {"n": 2**70}, ["not", "a dict"]):
            with pytest.raises(InputError, match=r"TextChunk\.meta"):
                await engine.feed(TextChunk(text="x", meta=meta))
        assert (await engine.ask("What is the pass key?", max_new_tokens=2)).segments


async def test_partial_utf8_around_text_keeps_its_order_and_is_counted(tiny_model_dir, anyio_backend, tmp_path) -> None:
    """Bytes of an incomplete character, then text: the character is ended (U+FFFD, counted) before
    the text comes; an incomplete character at a flush is ended and counted too, never dropped."""
    from xl3m_stream.persistence import read_stream

    state = tmp_path / "state"
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:
        await engine.feed(b"A\xe2\x82")
        await engine.feed("B")
        await engine.feed(b"\xacC")
        await engine.feed("D")
        await engine.feed(b"E\xe2")
        await engine.flush()
        assert engine.decode_stats.replaced == 3
        tokenizer = engine.tokenizer
    got = read_stream(state)
    assert tokenizer.decode(got.ids) + got.pending_text == "A\ufffdB\ufffdCDE\ufffd"
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:
        await engine.feed(b"F\xe2\x82")
    async with Engine(config(tiny_model_dir, state_dir=str(state))) as engine:  # held bytes restored
        ids = engine.tokenizer.encode("G", add_special_tokens=False)
        await engine.feed(ids)  # token ids end the character too
        await engine.flush()
    got = read_stream(state)
    assert tokenizer.decode(got.ids) == "A\ufffdB\ufffdCDE\ufffdF\ufffdG"


async def test_token_ids_and_text_mix_in_order(tiny_model_dir, anyio_backend) -> None:
    async with Engine(config(tiny_model_dir, segment_tokens=8)) as engine:
        ids = engine.tokenizer.encode(" blue sky", add_special_tokens=False)
        await engine.feed("green grass")
        await engine.feed(ids)
        await engine.flush()
        text = engine.tokenizer.decode([t for e in engine.store for t in e.segment.tokens])
        assert text == "green grass blue sky"


def test_sync_engine(tiny_model_dir) -> None:
    with SyncEngine(config(tiny_model_dir)) as engine:
        engine.process([TEXT[:600]])
        answer = engine.ask("What is the pass key?")
        assert answer.segments
        pieces = list(engine.ask_stream("What is the pass key?"))
        assert "".join(pieces) == answer.text  # greedy decoding is deterministic
        assert engine.key_context("What is the pass key?").tokens == answer.context_tokens
        assert engine.stats().asks >= 1
    with pytest.raises(EngineClosedError):
        engine.ask("x")


def test_sync_engine_offers_the_async_engines_calls(tiny_model_dir) -> None:
    """The calls the README promises: answer_with/budget_for, events(), the read-only views."""
    public = {n for n in dir(Engine) if not n.startswith("_")} - {"aclose", "process"}
    assert public <= set(dir(SyncEngine)), public - set(dir(SyncEngine))  # process is the sync one
    q = "What is the pass key?"
    with SyncEngine(config(tiny_model_dir)) as engine:
        with engine.events() as events:
            n = engine.feed(TEXT[:400])
            n += engine.flush()
            first = events.get(timeout=5)
            assert first is not None
            seen = [first]
            while (e := events.get(timeout=0.5)) is not None:
                seen.append(e)
            scored = [e for e in seen if isinstance(e, SegmentScored)]
            assert len(scored) == engine.stats().segments_scored > 0
        assert events.get(timeout=0.1) is None  # closed: nothing more
        assert engine.stream_tokens == n and engine.model_window > 0 and engine.reader_window > 0
        assert engine.model_name and engine.reader_name and engine.failed_segments == []
        assert len(engine.store) == engine.stats().store_segments and engine.replicas
        budget = engine.budget_for(q)
        assert 0 < budget <= engine.reader_window
        chosen = [e.segment for e in engine.store][:2]
        answer = engine.answer_with(chosen, q)
        assert [s.seq for s in answer.segments] == [s.seq for s in chosen]
        assert 0 < answer.context_tokens <= engine.reader_window
        # an iterating thread ends when the engine closes
        live = engine.events()
        got: list[object] = []
        t = threading.Thread(target=lambda: got.extend(live))
        t.start()
        engine.feed(TEXT[400:700])
        engine.flush()
    t.join(10)
    assert not t.is_alive() and any(isinstance(e, SegmentScored) for e in got)


def test_sync_engine_started_twice_stays_usable_and_closes(tiny_model_dir, tmp_path) -> None:
    """start() then ``with engine:`` (or start() twice): one engine, usable, closed once, its state released."""
    from xl3m_stream.persistence import read_snapshot

    state = tmp_path / "state"
    engine = SyncEngine(config(tiny_model_dir, state_dir=str(state)))
    assert engine.start() is engine
    with engine:
        assert engine.start() is engine  # harmless
        engine.feed(TEXT[:300])
        engine.flush()
        assert engine.ask("What is the pass key?").segments
        tokens = engine.stats().tokens_in
    with pytest.raises(EngineClosedError):
        engine.feed("more")
    engine.close()  # closing again is harmless too
    with pytest.raises(EngineClosedError, match="closed"):
        engine.start()  # an engine runs once: a clear error, nothing started
    snap = read_snapshot(state)
    assert snap is not None and snap.position == tokens  # the final snapshot was written at close
    with SyncEngine(config(tiny_model_dir, state_dir=str(state))) as again:  # and the lock released
        assert again.recovery is not None and again.recovery.tokens == tokens


async def test_abandoned_event_subscribers_are_released_and_subscribers_bounded(tiny_model_dir, anyio_backend) -> None:
    import gc
    import weakref

    from xl3m_stream.engine import MAX_SUBSCRIBERS

    async with Engine(config(tiny_model_dir)) as engine:
        kept = engine.events()
        refs = []
        for _ in range(30):  # `async for event in engine.events(): break`, 30 times
            stream = engine.events()
            refs.append(weakref.ref(stream))
            await engine.process([TEXT[:200]])
            async for _event in stream:
                break
            del stream
        await engine.process([TEXT[:400]])
        gc.collect()
        assert [r for r in refs if r() is not None] == []  # the engine holds none of them
        assert drain_events(kept)  # a subscriber still held goes on receiving
        streams = [engine.events() for _ in range(MAX_SUBSCRIBERS - 1)]
        with pytest.raises(InputError, match=f"{MAX_SUBSCRIBERS} event subscribers"):
            engine.events()
        streams.pop().close()  # closing one frees its place
        async with engine.events() as last:
            await engine.process([TEXT[:200]])
            assert drain_events(last)


async def test_concurrent_feeds_and_flushes_never_split_a_feed(tiny_model_dir, anyio_backend, tmp_path) -> None:
    """Two tasks feed one big string each (several slices) while a third flushes: each feed
    arrives whole, so the stream is one string after the other and no token is split."""
    from xl3m_stream.persistence import read_stream

    a, b = "alpha " * 23_000, "bravo " * 23_000  # 138,000 characters each: 3 feed slices
    state = tmp_path / "state"
    cfg = config(tiny_model_dir, state_dir=str(state), segment_tokens=256, batch_size=8, question=None)
    async with Engine(cfg) as engine:

        async def flush_mid_feed() -> None:
            while engine.stream_tokens == 0:
                await anyio.sleep(0)
            await engine.flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.feed, a)
            tg.start_soon(engine.feed, b)
            tg.start_soon(flush_mid_feed)
        await engine.flush()
        tokenizer = engine.tokenizer
    got = read_stream(state)
    text = tokenizer.decode(got.ids)
    assert text in (a + b, b + a), [w for w in set(text.split()) if w not in ("alpha", "bravo")][:5]
    first, second = (a, b) if text.startswith("alpha") else (b, a)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    # the flush came between the feeds or after both; inside one it would have cut a word in two
    assert got.ids in (encode(first + second), encode(first) + encode(second))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # (intake is the same under trio; this one is slow)
async def test_a_large_local_window_keeps_intake_linear(tiny_model_dir, anyio_backend) -> None:
    """With a 2M-token local window, 200 small feeds cost the same after 200k tokens as at the
    start (the recent tokens were copied on every feed: quadratic intake, 10x slower here)."""
    import time

    cfg = config(tiny_model_dir, question=None, local_window_tokens=2_000_000, segment_tokens=900, batch_size=16)
    async with Engine(cfg) as engine:
        ids = engine.tokenizer.encode(TEXT, add_special_tokens=False)

        async def block() -> float:
            await engine.drain()
            started = time.perf_counter()
            for i in range(200):
                await engine.feed(ids[i % 100 : i % 100 + 50])
            return time.perf_counter() - started

        early = await block()
        for _ in range(200_000 // len(ids)):
            await engine.feed(ids)
        late = await block()
        assert engine.stream_tokens > 200_000
    assert late < 3 * early + 0.05, (early, late)


async def test_the_local_window_does_not_change_rolling_questions(tiny_model_dir, anyio_backend) -> None:
    scores = []
    for window in (0, 1_000_000):
        # (batch_size=1: a batch is scored against its first segment's window, so batching would vary it)
        cfg = config(tiny_model_dir, question=None, local_window_tokens=window, batch_size=1)
        async with Engine(cfg) as engine:
            events = engine.events()
            for i in range(0, 1500, 70):
                await engine.feed(TEXT[i : i + 70])
            await engine.flush()
            scores.append(sorted((e.seq, e.score) for e in drain_events(events) if isinstance(e, SegmentScored)))
    assert scores[0] and scores[0] == scores[1]


async def test_source_metadata_reaches_segments(tiny_model_dir, anyio_backend) -> None:
    from xl3m_stream.sources import TextChunk

    lines = [
        TextChunk(
            text=f"2024-05-01T12:00:{i:02d}Z INFO api request {i} ok\n",
            meta={"line": i + 1, "ts": f"12:00:{i:02d}", "level": "INFO", "service": "api" if i < 20 else "db"},
        )
        for i in range(40)
    ]
    async with Engine(config(tiny_model_dir, segment_tokens=48, store_segments=100)) as engine:
        await engine.process(lines)
        entries = list(engine.store)
        assert entries and all(e.segment.meta for e in entries)
        first, last = entries[0].segment.meta, entries[-1].segment.meta
        assert first["line_start"] == 1 and last["line_end"] == 40
        assert first["service"] == "api" and last["service"] == "db"
        # line ranges of consecutive segments never go backwards and cover every line
        covered = set()
        for e in entries:
            m = e.segment.meta
            assert m["line_start"] <= m["line_end"]
            covered.update(range(m["line_start"], m["line_end"] + 1))
            assert m["level"] == "INFO"
        assert covered == set(range(1, 41))


async def test_rolling_questions_do_not_grow_memory(tiny_model_dir, anyio_backend, monkeypatch) -> None:
    from xl3m_stream._engine import questions

    monkeypatch.setattr(questions, "QUESTION_KEYS_KEPT", 3)
    async with Engine(config(tiny_model_dir, question=None, batch_size=1)) as engine:
        await engine.process([TEXT])
        assert engine.stats().batches > 3
        answer = await engine.ask("What is the pass key?")
        assert answer.rescored == engine.stats().store_segments  # forgotten keys count as other questions


def test_question_keys_are_bounded_and_recent_ones_kept(monkeypatch) -> None:
    from xl3m_stream._engine import questions

    monkeypatch.setattr(questions, "QUESTION_KEYS_KEPT", 3)
    keys = questions.Questions(EngineConfig(), scorer=None, window=8192)
    first = keys.key((1,))
    for q in [(2,), (3,), (1,), (4,)]:  # (1,) used again: (2,) is the oldest and goes
        keys.key(q)
    assert len(keys.keys) == 3 and (2,) not in keys.keys
    assert keys.key((1,)) == first  # kept its key
    assert keys.key((2,)) == 5  # a new key, never one used before (1-4 were)


def _two_replica_pool(monkeypatch, model_dir) -> None:
    """Make the engine load two CPU replicas of the tiny model (the pool normally has one per device)."""
    import torch

    from xl3m_stream import models
    from xl3m_stream.devices import DevicePool

    def load(config):
        loaded = [models.load(config.model, torch.device("cpu"), dtype="float32") for _ in range(2)]
        return DevicePool.from_models(loaded, config)

    monkeypatch.setattr(DevicePool, "load", staticmethod(load))


async def test_two_replicas_share_work_and_cover_a_failing_one(tiny_model_dir, anyio_backend, monkeypatch) -> None:
    _two_replica_pool(monkeypatch, tiny_model_dir)
    async with Engine(config(tiny_model_dir, batch_size=2, device_concurrency=1)) as engine:
        first, second = engine.replicas
        await engine.process([TEXT[:1500]])
        assert first.batches > 0 and second.batches > 0  # least-loaded dispatch used both

        def broken(segments, question):
            raise RuntimeError("device lost (simulated)")

        first.scorer.score = broken
        events = engine.events()
        before = (engine.stats().segments_cut, second.batches)
        await engine.process([TEXT[1500:3000]])
        errors = [e for e in drain_events(events) if isinstance(e, ErrorEvent)]
        assert errors and all(e.retrying and e.replica == first.index for e in errors)
        assert engine.failed_segments == []  # every batch the broken replica took went to the other
        assert engine.stats().segments_scored == engine.stats().segments_cut > before[0]
        assert second.batches > before[1]


def test_pool_picks_the_least_loaded_replica_not_excluded(tiny_loaded) -> None:
    from xl3m_stream.devices import DevicePool

    pool = DevicePool.from_models([tiny_loaded, tiny_loaded, tiny_loaded], EngineConfig(model="unused"))
    a, b, c = pool.replicas
    a.inflight, b.inflight, c.inflight = 2, 1, 1
    assert pool.pick() is b  # least in flight, ties to the lowest index
    assert pool.pick(exclude=[b.index]) is c
    assert pool.pick(exclude=[b.index, c.index]) is a  # the caller's failed replicas are skipped
    assert pool.pick(exclude=[0, 1, 2]) is None
