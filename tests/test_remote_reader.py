"""The remote reader (reader_model="openai:MODEL") against a real HTTP server on 127.0.0.1 that
speaks the OpenAI chat-completions wire format (streamed server-sent events), with switches for
the failures a served model shows: 429 with Retry-After, 5xx, 401, 404, a server that hangs, an
error in the stream, and a client that goes away mid-answer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from helpers import tiny_config

from xl3m_stream import ConfigError, Engine, EngineConfig, ReaderError
from xl3m_stream import remote as remote_mod
from xl3m_stream.errors import ModelLoadError

pytest.importorskip("httpx", reason="the remote reader needs httpx (the serve extra)")
pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-4242"
PASSKEY_TEXT = "Notes. The pass key is 71432. Keep it safe.\n"
QUESTION = "What is the pass key?"
FILLER = "".join(f"line {i}: the grass is green and the sky is blue.\n" for i in range(12))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the reader runs in a worker thread either way; one backend keeps this quick


class FakeOpenAI:
    """The server's state: what it received, and what it answers next (a script of behaviours,
    then the default answer)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[Any, ...]] = []
        self.answer = ["7143", "2"]
        self.release = threading.Event()  # ends "hang" and "gated" behaviours
        self.client_gone = threading.Event()
        self.lock = threading.Lock()

    def next(self) -> tuple[Any, ...]:
        with self.lock:
            return self.script.pop(0) if self.script else ("ok", self.answer)


def _handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path != "/v1/chat/completions":
                return self._status(404, {"error": {"message": "Not Found"}})
            kind, *args = state.next()
            if kind == "status":
                code, headers, payload = args
                return self._status(code, payload, headers)
            if kind == "hang":
                state.release.wait(args[0])
                return self._status(500, {"error": {"message": "gave up"}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                if kind == "ok":
                    for piece in args[0]:
                        self._event({"choices": [{"index": 0, "delta": {"content": piece}}]})
                elif kind == "gated":  # the second piece only once the test saw the first
                    first, rest = args
                    self._event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                    self._event({"choices": [{"index": 0, "delta": {"content": first}}]})
                    state.release.wait(10)
                    self._event({"choices": [{"index": 0, "delta": {"content": rest}}]})
                elif kind == "endless":  # until the client goes away
                    for _ in range(400):
                        self._event({"choices": [{"index": 0, "delta": {"content": "word "}}]})
                        time.sleep(0.02)
                    return
                elif kind == "error_event":
                    self._event({"choices": [{"index": 0, "delta": {"content": "par"}}]})
                    self._event({"error": {"message": f"engine died (key {KEY})"}})
                    return
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                state.client_gone.set()

        def _event(self, obj: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        def _status(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[FakeOpenAI, str]]:
    state = FakeOpenAI()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_mod, "BACKOFF_S", 0.01)


def remote_config(model_dir: Any, base: str, **changes: Any) -> EngineConfig:
    values: dict[str, Any] = dict(
        reader_model="openai:test-model", reader_base_url=f"{base}/v1", reader_api_key=KEY, reader_timeout_s=5.0
    )
    values.update(changes)
    return tiny_config(model_dir, **values)


def sent_content(request: dict[str, Any]) -> str:
    messages = request["body"]["messages"]
    assert [m["role"] for m in messages] == ["user"]
    return messages[0]["content"]


# --------------------------------------------------------------------------- answering
async def test_ask_answers_with_the_servers_text_from_the_key_context(tiny_model_dir, server) -> None:
    state, base = server
    async with Engine(remote_config(tiny_model_dir, base)) as engine:
        await engine.process([PASSKEY_TEXT])
        answer = await engine.ask(QUESTION)
        assert answer.text == "71432"
        assert answer.model == engine.reader_name == "openai:test-model"
        assert engine.reader_window == remote_mod.DEFAULT_WINDOW
        assert engine.replicas[0].reader_model.model is None  # nothing loaded for the reader
    (request,) = state.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "test-model" and body["stream"] is True
    assert body["max_tokens"] == 6 and body["temperature"] == 0.0 and "stop" not in body
    content = sent_content(request)
    assert "The pass key is 71432" in content and content.rstrip().endswith(QUESTION)
    assert all(s.text in content for s in answer.segments) and answer.segments


async def test_ask_stream_passes_pieces_on_as_they_arrive(tiny_model_dir, server) -> None:
    state, base = server
    state.script = [("gated", "alpha", " beta")]
    async with Engine(remote_config(tiny_model_dir, base, answer_style="free")) as engine:
        await engine.process([PASSKEY_TEXT])
        pieces = engine.ask_stream(QUESTION)
        with anyio.fail_after(10):
            first = await pieces.__anext__()
        assert first == "alpha" and not state.release.is_set()  # the server has not sent the rest yet
        state.release.set()
        rest = [p async for p in pieces]
        assert rest == [" beta"]


@pytest.mark.parametrize("slots", [None, 1])
async def test_remote_answers_run_side_by_side(tiny_model_dir, server, slots) -> None:
    """A remote reader writes several answers at once (8 by default): two asks are both at the
    server before either ends. With ``reader_concurrency=1`` the second waits for the first."""
    state, base = server
    state.script = [("gated", "7143", "2"), ("gated", "7143", "2")]
    # the read timeout outlasts the 5 s wait below: with one slot the first answer is held that long
    config = remote_config(tiny_model_dir, base, reader_concurrency=slots, reader_timeout_s=30.0)
    async with Engine(config) as engine:
        await engine.process([PASSKEY_TEXT])
        answers: list[str] = []

        async def ask() -> None:
            answers.append((await engine.ask(QUESTION)).text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            tg.start_soon(ask)
            with anyio.move_on_after(5):
                while len(state.requests) < 2:
                    await anyio.sleep(0.02)
            both_in_flight = len(state.requests) == 2
            state.release.set()
        assert answers == ["71432", "71432"]
        assert both_in_flight == (slots is None)


async def test_a_stop_string_ends_the_answer_there(tiny_model_dir, server) -> None:
    state, base = server
    state.answer = ["\n", "Paris", " is it.\nAnd", " more"]  # short answers stop at the end of their line
    async with Engine(remote_config(tiny_model_dir, base)) as engine:
        await engine.process([PASSKEY_TEXT])
        answer = await engine.ask(QUESTION)
    assert answer.text == "\nParis is it."


async def test_leaving_ask_stream_closes_the_response(tiny_model_dir, server) -> None:
    state, base = server
    state.script = [("endless",)]
    async with Engine(remote_config(tiny_model_dir, base, answer_style="free")) as engine:
        await engine.process([PASSKEY_TEXT])
        pieces = engine.ask_stream(QUESTION)
        assert await pieces.__anext__() == "word "
        await pieces.aclose()
        with anyio.fail_after(5):
            while not state.client_gone.is_set():
                await anyio.sleep(0.02)


async def test_the_prompt_never_exceeds_the_stated_window(tiny_model_dir, server) -> None:
    state, base = server
    window = 400
    cfg = remote_config(tiny_model_dir, base, reader_window=window, context_tokens=4096, store_segments=50)
    async with Engine(cfg) as engine:
        await engine.process([FILLER * 3, PASSKEY_TEXT, FILLER])
        await engine.ask(QUESTION)
        reader = engine.replicas[0].reader
        body = state.requests[-1]["body"]
        estimate = reader.prompt_tokens(body["messages"])
        assert estimate + body["max_tokens"] <= window
        assert estimate > window // 2  # the budget was used, not left empty
        # the estimate is the scorer's tokens with a margin: never below them
        content = sent_content(state.requests[-1])
        assert reader.count(content) >= len(engine.tokenizer.encode(content, add_special_tokens=False))


# --------------------------------------------------------------------------- retries
async def test_429_is_retried_after_retry_after(tiny_model_dir, server) -> None:
    state, base = server
    state.script = [("status", 429, {"Retry-After": "1"}, {"error": {"message": "slow down"}})]
    async with Engine(remote_config(tiny_model_dir, base)) as engine:
        await engine.process([PASSKEY_TEXT])
        started = time.monotonic()
        answer = await engine.ask(QUESTION)
        waited = time.monotonic() - started
    assert answer.text == "71432"
    assert len(state.requests) == 2
    assert waited >= 0.9  # the server's Retry-After, not the (patched, tiny) backoff


async def test_5xx_is_retried_until_it_succeeds(tiny_model_dir, server) -> None:
    state, base = server
    state.script = [("status", 500, {}, {"error": "boom"}), ("status", 503, {}, {"error": "busy"})]
    async with Engine(remote_config(tiny_model_dir, base, reader_attempts=3)) as engine:
        await engine.process([PASSKEY_TEXT])
        answer = await engine.ask(QUESTION)
    assert answer.text == "71432" and len(state.requests) == 3


# --------------------------------------------------------------------------- failures
FAILURES = {
    "401": (
        [("status", 401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}})],
        {},
        ["HTTP 401", "API key was refused", "OPENAI_API_KEY"],
        1,
    ),
    "404": (
        [("status", 404, {}, {"error": {"message": "The model `test-model` does not exist"}})],
        {},
        ["HTTP 404", "'test-model'", "reader_base_url"],
        1,
    ),
    "5xx-exhausted": (
        [("status", 502, {}, {"error": "bad gateway"})] * 2,
        {"reader_attempts": 2},
        ["HTTP 502", "after 2 attempt(s)", "bad gateway"],
        2,
    ),
    "timeout": ([("hang", 5)], {"reader_timeout_s": 0.5}, ["did not send anything for 0.5 s", "reader_timeout_s"], 1),
    "error-event": ([("error_event",)], {}, ["failed mid-answer", "engine died"], 1),
}


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_failed_answer_is_a_one_line_error_and_the_stream_goes_on(tiny_model_dir, server, kind) -> None:
    state, base = server
    script, changes, expected, requests = FAILURES[kind]
    state.script = list(script)
    async with Engine(remote_config(tiny_model_dir, base, **changes)) as engine:
        await engine.process([FILLER])
        before = engine.stream_tokens
        started = time.monotonic()
        with pytest.raises(ReaderError) as info:
            await engine.ask(QUESTION)
        message = str(info.value)
        assert "\n" not in message and KEY not in message
        assert repr(KEY) not in repr(info.value) and KEY not in repr(engine.config)
        for part in expected:
            assert part in message, (part, message)
        assert len(state.requests) == requests
        if kind == "timeout":
            assert time.monotonic() - started < 4  # gave up at the timeout, not when the server did
            state.release.set()
        # nothing of the stream is lost, and the next ask works
        await engine.process([PASSKEY_TEXT])
        assert engine.stream_tokens > before
        assert engine.stats().segments_scored == engine.stats().segments_cut
        answer = await engine.ask(QUESTION)
        assert answer.text == "71432"
        assert "The pass key is 71432" in sent_content(state.requests[-1])


async def test_an_unreachable_server_is_retried_then_a_clear_error(tiny_model_dir) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Engine(remote_config(tiny_model_dir, f"http://127.0.0.1:{port}", reader_attempts=3)) as engine:
        await engine.process([PASSKEY_TEXT])
        with pytest.raises(ReaderError, match=r"cannot reach it after 3 attempt\(s\) \(ConnectError\)"):
            await engine.ask(QUESTION)


async def test_an_alert_explanation_is_read_remotely(tiny_model_dir, server) -> None:
    state, base = server
    state.answer = ["it says", " 71432"]
    async with Engine(remote_config(tiny_model_dir, base, reader_window=64, answer_style="free")) as engine:
        reader = engine.replicas[0].reader
        text = PASSKEY_TEXT * 4
        from xl3m_stream import Alert

        alert = Alert(
            time=0.0, question=QUESTION, question_index=1, seq=0, start=0, end=1, score=1.0, threshold=0.0, text=text
        )
        explained = await engine._answerer.explain(alert)
        assert explained.explanation == "it says 71432"
        body = state.requests[-1]["body"]
        assert reader.prompt_tokens(body["messages"]) + body["max_tokens"] <= 64  # the segment's end, cut to fit
        content = sent_content(state.requests[-1])
        assert "Keep it safe." in content and text not in content


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"reader_model": "openai:", "reader_base_url": "http://localhost/v1"}, "needs the served model's name"),
        ({"reader_model": "openai:  "}, "needs the served model's name"),
        ({"reader_model": "openai:m", "reader_base_url": "ftp://localhost/v1"}, "http:// or https://"),
        ({"reader_model": "openai:m", "reader_base_url": "http:///v1"}, "with a host"),
        ({"reader_model": "openai:m", "reader_base_url": "http://h/v1?x=1"}, "API root alone"),
        ({"reader_base_url": "http://localhost/v1"}, "is not 'openai:MODEL'"),
        ({"reader_model": "openai:m", "reader_api_key": ""}, "non-empty key"),
        ({"reader_model": "openai:m", "reader_api_key": "sk bad\n"}, "non-empty key"),
        ({"model": "openai:m"}, "cannot score"),
        ({"reader_model": "openai:m", "reader_timeout_s": 0}, "reader_timeout_s"),
        ({"reader_model": "openai:m", "reader_attempts": 0}, "reader_attempts"),
    ],
)
def test_bad_remote_settings_are_config_errors(changes, match) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        EngineConfig(**changes)
    assert "\n" not in str(info.value) and "sk bad" not in str(info.value)


def test_the_key_never_shows() -> None:
    cfg = EngineConfig(reader_model="openai:m", reader_base_url="https://user:pw@host/v1", reader_api_key=KEY)
    for shown in (repr(cfg), str(cfg), str(cfg.redacted())):
        assert KEY not in shown and "pw" not in shown and "***" in shown
    assert cfg.to_dict()["reader_api_key"] == KEY  # round-trips (replace) keep it
    assert cfg.replace(temperature=0.5).reader_api_key == KEY
    with pytest.raises(ConfigError) as info:
        EngineConfig(reader_model="openai:m", reader_api_key=12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value)


def test_endpoint_defaults_come_from_the_environment() -> None:
    cfg = EngineConfig(reader_model="openai:m")
    env = {"OPENAI_BASE_URL": "http://gpu-box:8000/v1/", "OPENAI_API_KEY": KEY}
    assert remote_mod.resolve_endpoint(cfg, env) == ("http://gpu-box:8000/v1", KEY)
    assert remote_mod.resolve_endpoint(cfg, {}) == (remote_mod.DEFAULT_BASE_URL, None)
    mine = cfg.replace(reader_base_url="http://local:1/v1", reader_api_key="sk-mine")
    assert remote_mod.resolve_endpoint(mine, env) == ("http://local:1/v1", "sk-mine")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        remote_mod.resolve_endpoint(cfg, {"OPENAI_BASE_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY") as info:
        remote_mod.resolve_endpoint(cfg, {"OPENAI_API_KEY": "sk with space"})
    assert "sk with space" not in str(info.value)


def test_a_served_model_is_never_loaded_locally() -> None:
    from xl3m_stream import models
    from xl3m_stream.devices import reader_spec

    with pytest.raises(ModelLoadError, match="served over the OpenAI-compatible API"):
        models.resolve("openai:gpt-4o-mini")
    assert reader_spec(EngineConfig(reader_model="openai:gpt-4o-mini")) == "openai:gpt-4o-mini"
    assert reader_spec(EngineConfig(model="/some/dir", reader_model="openai:x")) == "openai:x"


def test_retry_after_accepts_seconds_and_dates_and_is_capped() -> None:
    import email.utils

    class R:
        def __init__(self, value: str | None) -> None:
            self.headers = {} if value is None else {"retry-after": value}

    assert remote_mod._retry_after(R("2")) == 2.0
    assert remote_mod._retry_after(R("100000")) == remote_mod.MAX_RETRY_AFTER_S
    assert remote_mod._retry_after(R(None)) is None and remote_mod._retry_after(R("soon")) is None
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 <= remote_mod._retry_after(R(later)) <= 5
    delays = [remote_mod._backoff(n) for n in (1, 2, 3)]
    assert all(0.5 * 0.01 * 2 ** (n - 1) <= d <= 0.01 * 2 ** (n - 1) for n, d in zip((1, 2, 3), delays))
