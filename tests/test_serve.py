"""``xl3m-stream serve``: a real server process on the tiny model, driven over HTTP.

One server per module (started once, restarted once by the last test to check that a SIGTERM
keeps every acknowledged token); the official ``openai`` client and httpx talk to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

KEY = "test-key-123"
MAX_BODY = 64 * 1024
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "The quick brown fox jumps over the lazy dog. The pass key is 71432. Remember it. " * 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, state_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.model_dir, self.state_dir, self.extra = model_dir, state_dir, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = state_dir.parent / "server.log"

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "xl3m_stream.cli", "serve", "--port", str(port), "--api-key", KEY,
                "--state-dir", str(self.state_dir), "--max-body", str(MAX_BODY), "--model", str(self.model_dir),
                "--device", "cpu", "--dtype", "float32", "--segment-tokens", "32", "--batch-size", "4",
                "--context-tokens", "160", "--max-new-tokens", "6", "--relevance", "certainty,lexical",
                *self.extra]  # fmt: skip
        env = {**os.environ, "XL3M_STREAM_RELEVANCE": '["certainty", "lexical"]'}
        env.pop(API_KEY_ENV, None)
        self._log = open(self.log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not come up: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def client(self, **kw: Any) -> Any:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=60, **kw)


API_KEY_ENV = "XL3M_STREAM_API_KEY"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = Server(tiny_model_dir, tmp_path_factory.mktemp("serve") / "state")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture()
def http(server: Server) -> Any:
    with server.client() as client:
        yield client


# --------------------------------------------------------------------------- basics and security
def test_healthz_needs_no_token(server: Server) -> None:
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_token_required(server: Server, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/streams/a/feed")]:
        r = httpx.request(method, server.url + path, headers=headers, content=b"x")
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["type"] == "authentication_error"


def test_unknown_route_and_stream_are_404(http: Any) -> None:
    r = http.get("/nothing/here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    for method, path, body in [
        ("POST", "/v1/streams/never-fed/ask", {"question": "x?"}),
        ("GET", "/v1/streams/never-fed/events", None),
        ("GET", "/v1/streams/never-fed/watches", None),
        ("POST", "/v1/streams/never-fed/watches", {"question": "x?"}),
    ]:
        r = http.request(method, path, json=body)
        assert r.status_code == 404, path
        assert r.json()["error"]["type"] == "stream_not_found"


@pytest.mark.parametrize("name", ["..", "a..b", ".hidden", "-x", "x" * 65, "a%2Fb", "a b"])
def test_bad_stream_name_refused(http: Any, server: Server, name: str) -> None:
    r = http.post(f"/v1/streams/{name}/feed", content=b"hello")
    assert r.status_code in (400, 404), name
    assert "error" in r.json()
    assert not any(p.name == name for p in server.state_dir.iterdir())
    assert not (server.state_dir.parent / "b").exists()


def test_oversized_body_is_413(http: Any) -> None:
    r = http.post("/v1/streams/big/feed", content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks() -> Any:  # no Content-Length: counted as it is read
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"y" * 4096

    r = http.post("/v1/streams/big/feed", content=chunks())
    assert r.status_code == 413


def test_bad_json_is_422(http: Any) -> None:
    http.post("/v1/streams/j/feed", content=b"some text ").raise_for_status()
    for body in [b"{bad", b"[]", b'{"question": 3}', b'{"question": "q", "max_new_tokens": "many"}']:
        r = http.post("/v1/streams/j/ask", content=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post(
        "/v1/streams/j/feed", content=b'{"text": "ok"}\n{"txt": 1}\n', headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 422 and "line 2" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json={"model": "xl3m-stream", "messages": "hello"})
    assert r.status_code == 422


# --------------------------------------------------------------------------- stream routes
def test_feed_text_and_ndjson_then_ask(http: Any) -> None:
    r = http.post("/v1/streams/docs/feed", content=TEXT.encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["tokens"] > 0 and first["stream_tokens"] >= first["tokens"]
    lines = [json.dumps({"text": "ERROR disk full on node-3\n", "meta": {"level": "ERROR"}}), "",
             json.dumps({"text": "INFO all good\n"})]  # fmt: skip
    r = http.post(
        "/v1/streams/docs/feed", content="\n".join(lines).encode(), headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["stream_tokens"] >= first["stream_tokens"]

    r = http.post("/v1/streams/docs/ask", json={"question": "What is the pass key?", "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    out = r.json()
    assert {"answer", "question", "segments", "stream_tokens", "seconds", "ask_seconds"} <= set(out)
    assert out["question"] == "What is the pass key?" and isinstance(out["answer"], str)
    assert out["stream_tokens"] >= first["stream_tokens"] and out["segments"]
    assert {"start", "end", "score", "text"} <= set(out["segments"][0])


def test_ask_stream_sends_pieces_then_done(http: Any) -> None:
    http.post("/v1/streams/docs2/feed", content=TEXT.encode()).raise_for_status()
    with http.stream("POST", "/v1/streams/docs2/ask", json={"question": "What is the pass key?", "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.iter_lines())
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and "piece" in kinds and set(kinds) <= {"piece", "done"}
    pieces = "".join(d["text"] for e, d in events if e == "piece")
    assert events[-1][1]["answer"] == pieces


def _sse(lines: Any) -> list[tuple[str, Any]]:
    out, event, data = [], None, []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            text = "\n".join(data)
            out.append((event or "message", text if text == "[DONE]" else json.loads(text)))
            event, data = None, []
    return out


def test_events_stream_sees_a_scored_segment(server: Server, http: Any) -> None:
    http.post("/v1/streams/ev/feed", content=b"start ").raise_for_status()

    async def run() -> dict[str, Any]:
        async with (
            httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as client,
            client.stream("GET", "/v1/streams/ev/events") as r,
        ):
            assert r.status_code == 200
            lines = r.aiter_lines()
            assert (await lines.__anext__()).startswith(": subscribed")
            (await client.post("/v1/streams/ev/feed", content=TEXT.encode())).raise_for_status()
            (await client.post("/v1/streams/ev/flush")).raise_for_status()
            event = None
            with anyio_fail_after(30):
                async for line in lines:
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "SegmentScored":
                        return json.loads(line[5:])
        raise AssertionError("no SegmentScored event")

    scored = asyncio.run(run())
    assert scored["type"] == "scored" and scored["end"] > scored["start"]


def anyio_fail_after(seconds: float) -> Any:
    import anyio

    return anyio.fail_after(seconds)


def test_watches_create_list_delete(http: Any) -> None:
    http.post("/v1/streams/w/feed", content=b"a log line\n").raise_for_status()
    r = http.post("/v1/streams/w/watches", json={"question": "Is a disk full?", "threshold": "z3"})
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    listed = http.get("/v1/streams/w/watches").json()["watches"]
    assert [w["id"] for w in listed] == [wid]
    assert listed[0]["question"] == "Is a disk full?" and listed[0]["threshold"] == "z3"
    assert http.post("/v1/streams/w/watches", json={"question": "q?", "threshold": "nonsense"}).status_code == 422
    assert http.delete(f"/v1/streams/w/watches/{wid}").status_code == 200
    assert http.get("/v1/streams/w/watches").json()["watches"] == []
    assert http.delete(f"/v1/streams/w/watches/{wid}").status_code == 404


def test_metrics_have_a_stream_label(http: Any) -> None:
    http.post("/v1/streams/m/feed", content=TEXT.encode()).raise_for_status()
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'xl3m_stream_tokens_in_total{stream="m"}' in r.text
    assert "# TYPE xl3m_stream_scoring_latency_seconds histogram" in r.text


# --------------------------------------------------------------------------- the OpenAI face
def test_openai_client_sync(server: Server, http: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["xl3m-stream"]
    history = [{"role": "system", "content": "You answer from the log."}, {"role": "user", "content": TEXT},
               {"role": "user", "content": "What is the pass key?"}]  # fmt: skip
    resp = client.chat.completions.create(model="xl3m-stream", messages=history, user="chat-sync", max_tokens=4)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.completion_tokens <= 4

    def fed() -> int:
        r = http.post("/v1/chat/completions", json={"model": "x", "messages": history, "user": "chat-sync"})
        return r.json()["xl3m_stream"]["stream_tokens"]

    before = fed()  # the same history again: nothing new is fed
    assert fed() == before
    history += [{"role": "assistant", "content": choice.message.content or ""},
                {"role": "user", "content": TEXT}, {"role": "user", "content": "And the fox?"}]  # fmt: skip
    assert fed() > before

    chunks = list(client.chat.completions.create(model="xl3m-stream", messages=history, stream=True,
                                                 extra_headers={"X-Xl3m-Stream": "chat-sync"}))  # fmt: skip
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fed() > before  # the header named the same stream; still nothing fed twice


def test_a_long_last_message_is_fed_whole_and_its_tail_asked(http: Any) -> None:
    """A user message longer than max_question_tokens (a pasted log that ends in its question)
    is fed whole and answered from its last lines; before, it was refused with 400."""
    log = "".join(f"line {i}: routine entry number {i}, nothing to see.\n" for i in range(80))
    messages = [{"role": "user", "content": log + "Which line number mentions the pass key 71432?"}]
    r = http.post("/v1/chat/completions", json={"messages": messages, "user": "longmsg"})
    assert r.status_code == 200, r.text
    assert r.json()["xl3m_stream"]["stream_tokens"] > 256
    one_line = [{"role": "user", "content": "word " * 600 + "what now?"}]
    r = http.post("/v1/chat/completions", json={"messages": one_line, "user": "longmsg2"})
    assert r.status_code == 200, r.text


def test_openai_client_async(server: Server) -> None:
    openai = pytest.importorskip("openai")

    async def run() -> tuple[Any, list[Any]]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        messages = [{"role": "user", "content": TEXT}, {"role": "user", "content": "What is the pass key?"}]
        resp = await client.chat.completions.create(model="xl3m-stream", messages=messages)
        stream = await client.chat.completions.create(model="xl3m-stream", messages=messages, stream=True)
        chunks = [c async for c in stream]
        await client.close()
        return resp, chunks

    resp, chunks = asyncio.run(run())
    assert resp.choices[0].message.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert isinstance(text, str) and chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"


def test_openai_errors(server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="xl3m-stream", messages=[{"role": "assistant", "content": "hi"}])


def test_refuses_public_bind_without_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from xl3m_stream.cli import main

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without an API key" in err


# --------------------------------------------------------------------------- last: restart
def test_a_second_engine_reads_through_the_server(server: Server, http: Any, tiny_model_dir: Path) -> None:
    """The remote reader against our own server: an engine scores locally and sends its key
    context to ``xl3m-stream serve`` as its OpenAI-compatible reader; the server feeds that
    conversation to a stream and answers over it."""
    import anyio
    from helpers import tiny_config

    from xl3m_stream import Engine

    def tokens_of(name: str) -> int:
        listed = {s["name"]: s["stream_tokens"] for s in http.get("/v1/streams").json()["streams"]}
        return listed.get(name, 0)

    before = tokens_of("default")  # a request without a `user` field goes to the default stream

    async def run() -> Any:
        cfg = tiny_config(
            tiny_model_dir, reader_model="openai:xl3m-stream", reader_base_url=f"{server.url}/v1", reader_api_key=KEY
        )
        async with Engine(cfg) as engine:
            await engine.process([TEXT])
            pieces = [p async for p in engine.ask_stream("What is the pass key?")]
            return await engine.ask("What is the pass key?"), pieces

    answer, pieces = anyio.run(run)
    assert answer.model == "openai:xl3m-stream"
    assert isinstance(answer.text, str) and answer.segments  # selected locally, read remotely
    assert isinstance("".join(pieces), str)
    assert tokens_of("default") > before  # the key context reached the server's stream


def test_the_cli_reads_through_the_server(server: Server, tiny_model_dir: Path, tmp_path: Path) -> None:
    """``xl3m-stream ask --reader-model openai:M --reader-base-url URL`` with the key from
    ``$OPENAI_API_KEY``: the command line's remote reader, end to end."""
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    cmd = [sys.executable, "-m", "xl3m_stream.cli", "ask", str(doc), "--question", "What is the pass key?",
           "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32", "--segment-tokens", "32",
           "--relevance", "certainty,lexical", "--reader-model", "openai:xl3m-stream",
           "--reader-base-url", f"{server.url}/v1", "--max-new-tokens", "4", "--json"]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["segments"] and isinstance(out["answer"], str)
    env["OPENAI_API_KEY"] = "wrong-key"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "401" in proc.stderr and "wrong-key" not in proc.stderr


def test_sigterm_then_restart_keeps_every_acknowledged_token(server: Server) -> None:
    from xl3m_stream.persistence import read_stream

    texts = [f"record {i}: the value of item {i} is {i * 7}.\n" for i in range(40)]
    with server.client() as http:
        acked = 0
        for text in texts:
            r = http.post("/v1/streams/durable/feed", content=text.encode())
            assert r.status_code == 200
            acked = r.json()["stream_tokens"]
        chat = [{"role": "user", "content": TEXT}, {"role": "user", "content": "hi?"}]
        r = http.post("/v1/chat/completions", json={"messages": chat, "user": "chat2"})
        chat_tokens = r.json()["xl3m_stream"]["stream_tokens"]
    assert server.stop() in (0, -signal.SIGTERM)
    contents = read_stream(server.state_dir / "durable")
    assert contents.chars == sum(len(t) for t in texts)
    server.start()
    with server.client() as http:
        names = {s["name"] for s in http.get("/v1/streams").json()["streams"]}
        assert {"durable", "docs", "chat2"} <= names  # every stream in the state dir resumed
        r = http.post("/v1/streams/durable/ask", json={"question": "What is the value of item 3?"})
        assert r.status_code == 200, r.text
        assert r.json()["stream_tokens"] >= acked
        # the chat history resent after the restart is not fed again; a new message is
        r = http.post("/v1/chat/completions", json={"messages": chat, "user": "chat2"})
        assert r.status_code == 200, r.text
        assert r.json()["xl3m_stream"]["stream_tokens"] == chat_tokens
        chat += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "and then?"}]
        r = http.post("/v1/chat/completions", json={"messages": chat, "user": "chat2"})
        assert r.json()["xl3m_stream"]["stream_tokens"] > chat_tokens


# --------------------------------------------------------------------------- limits (429)
@pytest.fixture(scope="module")
def tight(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose scoring lags on purpose: one segment may wait to be scored, and a batch
    waits 5 s to fill up, so a feed of a few segments holds the queue full for seconds."""
    folder = tmp_path_factory.mktemp("tight")
    cfg = folder / "engine.json"
    cfg.write_text(json.dumps({"max_pending_segments": 1, "batch_wait_ms": 5000}))
    srv = Server(tiny_model_dir, folder / "state", ("--max-streams", "2", "--feed-timeout", "0.5",
                                                    "--config", str(cfg), "--batch-size", "64"))  # fmt: skip
    srv.start()
    yield srv
    srv.stop()


def _queue_depth(http: Any, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'xl3m_stream_queue_depth{{stream="{name}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_feed_with_no_room_is_429_and_takes_nothing(tight: Server) -> None:
    import threading

    first: dict[str, Any] = {}
    with tight.client() as http:
        assert http.post("/v1/streams/busy/feed", content=b"warm up.\n").status_code == 200

        def feed_first() -> None:  # several segments: the queue is over its bound until the batch runs
            with tight.client() as own:
                first["r"] = own.post("/v1/streams/busy/feed", content=TEXT.encode())

        thread = threading.Thread(target=feed_first)
        thread.start()
        deadline = time.monotonic() + 20
        while _queue_depth(http, "busy") <= 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _queue_depth(http, "busy") > 1, "the first feed never filled the queue"
        r = http.post("/v1/streams/busy/feed", content=b"second feed, refused.\n")
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "backpressure" and "nothing of this request" in r.json()["error"]["message"]
        thread.join(60)
        assert first["r"].status_code == 200, first["r"].text  # the body being taken was taken whole
        r = http.post("/v1/streams/busy/feed", content=b"second feed, sent again.\n")
        assert r.status_code == 200
        assert http.post("/v1/streams/busy/flush").status_code == 200
    # the refused body is not in the stream; the one sent again is, once (read from its log)
    tight.stop()
    text = _stream_text(tight.model_dir, tight.state_dir / "busy")
    assert "refused" not in text and text.count("sent again") == 1 and TEXT in text
    tight.start()


def _stream_text(model_dir: Path, state: Path) -> str:
    from transformers import AutoTokenizer

    from xl3m_stream.persistence import read_stream

    contents = read_stream(state)
    return AutoTokenizer.from_pretrained(model_dir).decode(contents.ids) + contents.pending_text


def test_streams_past_the_cap_are_429(tight: Server) -> None:
    with tight.client() as http:
        names = {s["name"] for s in http.get("/v1/streams").json()["streams"]}
        for name in ("cap-a", "cap-b", "cap-c"):
            if len(names) >= 2:
                break
            assert http.post(f"/v1/streams/{name}/feed", content=b"hello.\n").status_code == 200
            names.add(name)
        r = http.post("/v1/streams/one-too-many/feed", content=b"hello.\n")
        assert r.status_code == 429 and r.json()["error"]["type"] == "stream_limit"
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi?"}], "user": "other"})
        assert r.status_code == 429
        assert http.get("/v1/streams/one-too-many/ask").status_code in (404, 405)


def test_import_does_not_pull_in_the_server() -> None:
    code = "import sys, xl3m_stream, xl3m_stream.cli; assert not {'starlette', 'uvicorn'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
