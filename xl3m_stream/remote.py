"""A reader served over the OpenAI-compatible API (vLLM, llama.cpp server, Ollama, a hosted API).

``EngineConfig(reader_model="openai:MODEL")`` makes :class:`RemoteReader` write the answers:
the key context and the question go to ``POST {reader_base_url}/chat/completions`` as one user
turn with ``stream: true``, and the answer's text deltas come back as server-sent events,
passed on as they arrive (``ask_stream`` streams). Scoring stays local: the certainty measures
need the model's whole next-token distribution, and these APIs return at most ~20 top logprobs.

:class:`RemoteReader` has the interface of :class:`~xl3m_stream.inference.Reader` that the
engine uses (``count``, ``room``, ``prompt``, ``generate``, ``stop_for``, ``encode``...), so the
engine reads through it unchanged. Its prompt is the chat messages, not token ids.

Counting. The served model's tokenizer is unknown here, so the key-context budget counts an
estimate: the scoring model's tokens times :data:`TOKEN_SAFETY` (1.25, rounded up), plus
:data:`CHAT_OVERHEAD` tokens for the chat template's markup; the window is
``EngineConfig.reader_window`` (default :data:`DEFAULT_WINDOW`). Budgets and the check before
each request use the same estimate, so the estimated prompt plus ``max_new_tokens`` never
exceeds the stated window. A server that still finds the prompt too long answers 400, which
surfaces as a :class:`~xl3m_stream.errors.ReaderError` quoting it: lower ``reader_window``.

Failures. HTTP 429, 5xx and connection errors are retried up to ``reader_attempts`` times in
all, after the server's ``Retry-After`` (at most :data:`MAX_RETRY_AFTER_S`) or an exponential
backoff with jitter; nothing is retried once part of the answer was passed on (it would
repeat). A read that waits longer than ``reader_timeout_s`` is not retried (the server has the
request and is slow: asking again adds load). Every failure is a one-line ReaderError that
never holds the API key (nor a password in the URL); the engine's stream is untouched by it.

Stop strings are applied here, as the local reader applies them (only once the answer has
begun), and not sent to the server; when one is reached, or ``should_stop()`` turns true, the
response is closed (vLLM and llama.cpp then stop generating).
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import catalog
from .config import EngineConfig, _check_api_key, _check_base_url, _url_for_display
from .errors import ConfigError, ReaderError
from .inference import SHORT_ANSWER_INSTRUCTION, _StopStrings
from .scoring import SEPARATOR
from .tokenizer import data_tokenizer

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""The API root when neither ``reader_base_url`` nor ``$OPENAI_BASE_URL`` is set (the OpenAI client's default)."""
DEFAULT_WINDOW = 8192
"""The served model's window when ``reader_window`` is None: most served models have at least this."""
TOKEN_SAFETY = 1.25
"""Estimated served-model tokens per scoring-model token: tokenizers of served models (32k-200k
vocabularies) rarely need more tokens than the scorer's for the same text; 25 % covers the rest."""
CHAT_OVERHEAD = 16
"""Tokens kept for the chat template's markup around one user turn and the assistant's start."""
CONNECT_TIMEOUT_S = 10.0
"""Longest wait to connect (``reader_timeout_s`` when that is shorter)."""
BACKOFF_S = 0.5
"""First wait between attempts; it doubles each attempt (times a random 0.5-1 jitter)."""
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0
"""Longest ``Retry-After`` honoured; a longer one is waited this long."""
_DETAIL_CHARS = 200
_RETRY_STATUS = frozenset({408, 409, 429})


def resolve_endpoint(config: EngineConfig, environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The API root and key for ``config``: its fields, else ``$OPENAI_BASE_URL`` and
    ``$OPENAI_API_KEY`` (the OpenAI client's convention), else the OpenAI API and no key.
    ConfigError when an environment value is unusable (the key never quoted)."""
    env = os.environ if environ is None else environ
    url = config.reader_base_url
    if url is None:
        url = (env.get("OPENAI_BASE_URL") or "").strip() or None
        if url is not None:
            _check_base_url("OPENAI_BASE_URL", url)
    key = config.reader_api_key
    if key is None:
        key = (env.get("OPENAI_API_KEY") or "").strip() or None
        if key is not None:
            _check_api_key("OPENAI_API_KEY", key)
    return (url or DEFAULT_BASE_URL).strip().rstrip("/"), key


class RemoteReader:
    """Writes answers with a model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    One ``httpx.Client`` per reader (it is thread-safe: replicas share one reader); call
    :meth:`close` when done (``DevicePool.close`` does).
    """

    prompt_style = "chat"

    def __init__(
        self,
        model: str,
        tokenizer: Any,
        *,
        base_url: str,
        api_key: str | None = None,
        window: int = DEFAULT_WINDOW,
        answer_style: str = "short",
        timeout_s: float = 60.0,
        attempts: int = 4,
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise ConfigError(
                "reader_model='openai:...' needs httpx: pip install 'xl3m-stream[serve]' (or pip install httpx)"
            ) from None
        if not model.strip():
            raise ConfigError("reader_model: 'openai:' needs the served model's name")
        if answer_style not in ("short", "free"):
            raise ValueError(f"answer_style must be 'short' or 'free', got {answer_style!r}")
        if attempts < 1 or timeout_s <= 0:
            raise ValueError("attempts must be >= 1 and timeout_s > 0")
        _check_base_url("reader_base_url", base_url)
        if api_key is not None:
            _check_api_key("reader_api_key", api_key)
        self.model_name = model.strip()
        self.name = catalog.REMOTE_PREFIX + self.model_name
        self.tokenizer = tokenizer
        self.window = window
        self.answer_style = answer_style
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.base_url = base_url.strip().rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._shown_url = _url_for_display(self.url)
        self._key = api_key
        self._data = data_tokenizer(tokenizer)
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            follow_redirects=False,
        )

    @classmethod
    def from_config(
        cls, config: EngineConfig, tokenizer: Any, environ: Mapping[str, str] | None = None
    ) -> RemoteReader:
        """The reader ``config.reader_model="openai:MODEL"`` asks for; ``tokenizer`` (the scoring
        model's) counts the estimate."""
        model = catalog.remote_name(config.reader_model)
        if model is None:
            raise ConfigError(f"reader_model: {config.reader_model!r} is not 'openai:MODEL'")
        base_url, key = resolve_endpoint(config, environ)
        return cls(
            model,
            tokenizer,
            base_url=base_url,
            api_key=key,
            window=config.reader_window or DEFAULT_WINDOW,
            answer_style=config.answer_style,
            timeout_s=config.reader_timeout_s,
            attempts=config.reader_attempts,
        )

    def __repr__(self) -> str:
        return f"RemoteReader({self.name!r}, {_url_for_display(self.base_url)!r}, window={self.window})"

    def close(self) -> None:
        self._http.close()

    # --- the Reader interface ----------------------------------------------------------
    def style_for(self, question: str) -> str:
        return "chat"  # a chat-completions endpoint: always a user turn

    def stop_for(self, question: str) -> tuple[str, ...]:
        """As the local reader's chat style: a short answer ends with its line."""
        return ("\n",) if self.answer_style == "short" else ()

    def encode(self, text: str) -> list[int]:
        """``text`` in the scoring model's tokens, as data (the unit :meth:`count` scales)."""
        return self._data.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def count(self, text: str) -> int:
        """Estimated served-model tokens of ``text``: the scorer's tokens times :data:`TOKEN_SAFETY`, rounded up."""
        return math.ceil(len(self.encode(text)) * TOKEN_SAFETY) if text else 0

    def content(self, context: str, question: str) -> str:
        """The user turn: the key context and the question (for ``short``, with the instruction)."""
        body = f"{SHORT_ANSWER_INSTRUCTION}\n\nQuestion: {question}" if self.answer_style == "short" else question
        return f"{context}{SEPARATOR}{body}" if context else body

    def prompt(self, context: str, question: str) -> list[dict[str, str]]:
        """The chat messages for a key context and a question (what :meth:`generate` sends)."""
        return [{"role": "user", "content": self.content(context, question)}]

    def prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> int:
        """Estimated tokens of ``messages`` with the template's markup."""
        return CHAT_OVERHEAD + sum(self.count(m["content"]) for m in messages)

    def room(self, question: str, max_new_tokens: int) -> int:
        """Estimated tokens left for the key context in the window after the frame, the question
        and the answer (as the local reader's, with a few kept back for the join)."""
        return self.window - max_new_tokens - self.prompt_tokens(self.prompt("", question)) - self.count(SEPARATOR) - 2

    def question_tokens(self, question: str) -> int:
        return self.count(question)

    def generate(
        self,
        prompt: Sequence[Mapping[str, str]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        stop: Sequence[str] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield the answer's text pieces as the server sends them.

        Ends at the server's end, at the first ``stop`` string after the answer's first
        non-blank character (not yielded), or when ``should_stop()`` turns true (the response
        is closed). Raises ReaderError when the server fails (after the retries).
        """
        import httpx

        messages = [dict(m) for m in prompt]
        estimate = self.prompt_tokens(messages)
        if estimate + max_new_tokens > self.window:
            raise ValueError(
                f"prompt of ~{estimate} tokens + {max_new_tokens} new tokens exceeds the reader's "
                f"window of {self.window}"
            )
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "stream": True,
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        if temperature > 0:
            body["seed"] = seed
        for attempt in range(1, self.attempts + 1):
            if should_stop():
                return
            last = attempt == self.attempts
            produced = [0]  # characters passed on: past 0, nothing is retried
            try:
                with self._http.stream("POST", self.url, json=body) as response:
                    status = response.status_code
                    if status != 200:
                        detail = self._detail(response)
                        if (status in _RETRY_STATUS or status >= 500) and not last:
                            self._pause(_retry_after(response) or _backoff(attempt), should_stop)
                            continue
                        raise ReaderError(self._status_message(status, detail, attempt))
                    yield from self._pieces(response, stop, should_stop, produced)
                    return
            except httpx.TimeoutException as exc:
                if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)) and not last and not produced[0]:
                    self._pause(_backoff(attempt), should_stop)
                    continue
                what = "connect" if isinstance(exc, httpx.ConnectTimeout) else "send anything"
                raise ReaderError(
                    f"remote reader {self.name}: {self._shown_url} did not {what} for "
                    f"{self.timeout_s:g} s (reader_timeout_s){self._after(produced[0])}"
                ) from None
            except httpx.TransportError as exc:  # refused, reset, closed mid-way
                if not last and not produced[0]:
                    self._pause(_backoff(attempt), should_stop)
                    continue
                how = "the connection broke" if produced[0] else f"cannot reach it after {attempt} attempt(s)"
                raise ReaderError(
                    f"remote reader {self.name}: {self._shown_url}: {how} ({type(exc).__name__})"
                    f"{self._after(produced[0])}"
                ) from None

    # --- internals ------------------------------------------------------------------------
    def _pieces(
        self, response: Any, stop: Sequence[str], should_stop: Callable[[], bool], produced: list[int]
    ) -> Iterator[str]:
        """The text deltas of a streamed chat completion, stop strings applied."""
        text = ""
        stops = _StopStrings(stop)
        for line in response.iter_lines():
            if should_stop():
                return
            line = line.strip()
            if not line.startswith("data:"):
                continue  # blank lines between events, ": comments", "event:" lines
            data = line[5:].strip()
            if data == "[DONE]":
                break
            delta = self._delta(data)
            if not delta:
                continue
            text += delta
            if piece := stops.step(text):
                produced[0] += len(piece)
                yield piece
            if stops.stopped:
                return
        if piece := stops.rest(text):
            produced[0] += len(piece)
            yield piece

    def _delta(self, data: str) -> str:
        """The content of one ``data:`` event (a chat.completion.chunk), or ReaderError."""
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if isinstance(chunk, dict) and "error" in chunk:  # vLLM and others report failures in-stream
            raise ReaderError(f"remote reader {self.name}: the server failed mid-answer: {self._say(chunk['error'])}")
        try:
            choices = chunk["choices"]  # type: ignore[index]
            if not choices:
                return ""  # e.g. a final usage chunk
            content = choices[0].get("delta", {}).get("content")
        except (TypeError, KeyError, AttributeError, IndexError):
            raise ReaderError(
                f"remote reader {self.name}: {self._shown_url} sent an event that is not a chat-completion chunk: "
                f"{self._say(data)}"
            ) from None
        return content if isinstance(content, str) else ""

    def _detail(self, response: Any) -> str:
        """The server's reason for an error status, short and without the key."""
        raw = b""
        try:
            for block in response.iter_bytes():
                raw += block
                if len(raw) > 4096:
                    break
        except Exception:
            pass
        text = raw.decode("utf-8", "replace")
        try:
            obj = json.loads(text)
            err = obj.get("error", obj) if isinstance(obj, dict) else obj
            text = err.get("message", err) if isinstance(err, dict) else err
        except ValueError:
            pass
        return self._say(text)

    def _say(self, value: Any) -> str:
        """``value`` as one short line with the API key masked."""
        text = " ".join(str(value).split())
        if self._key:
            text = text.replace(self._key, "***")
        return text[:_DETAIL_CHARS] + ("..." if len(text) > _DETAIL_CHARS else "")

    def _status_message(self, status: int, detail: str, attempt: int) -> str:
        where = f"remote reader {self.name}: {self._shown_url} answered HTTP {status}"
        why = f" ({detail})" if detail else ""
        if status in (401, 403):
            return f"{where}{why}: the API key was refused; set reader_api_key or $OPENAI_API_KEY"
        if status == 404:
            return (
                f"{where}{why}: unknown model {self.model_name!r}, or reader_base_url is wrong "
                "(it is the API root, usually ending in /v1)"
            )
        if status in _RETRY_STATUS or status >= 500:
            return f"{where}{why}, after {attempt} attempt(s)"
        return f"{where}{why}: the request was refused"

    @staticmethod
    def _after(produced: int) -> str:
        return f", after {produced} characters of the answer" if produced else ""

    @staticmethod
    def _pause(seconds: float, should_stop: Callable[[], bool]) -> None:
        """Sleep ``seconds``, waking early when ``should_stop()`` turns true."""
        end = time.monotonic() + seconds
        while not should_stop() and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter: ``BACKOFF_S * 2**(attempt-1)`` (capped), times 0.5-1."""
    return min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def _retry_after(response: Any) -> float | None:
    """The ``Retry-After`` header in seconds (a number or an HTTP date), capped; None when absent."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
