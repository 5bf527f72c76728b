"""Key-context assembly and answer generation.

``assemble`` splices the selected segments in stream order (dropping tokens that overlapping
segments share, and marking gaps), adds the most recent tokens as a local window, and returns a
:class:`KeyContext` with provenance. :class:`Reader` turns a key context and a question into a
prompt and generates the answer token by token with a KV cache: plain forward passes, greedy or
sampled, cancellable between tokens. Synchronous code: the engine runs it in a worker thread.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
import torch

from .scoring import SEPARATOR, bos_prefix
from .store import StoreEntry
from .tokenizer import data_tokenizer

GAP = "\n[...]\n"
"""Marks text left out between two non-adjacent segments of the key context."""


class ContextSegment(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of a key context with its provenance in the stream."""

    seq: int
    start: int
    end: int
    score: float | None
    text: str
    local: bool = False
    meta: dict[str, Any] | None = None


class KeyContext(msgspec.Struct, frozen=True, kw_only=True):
    """The selected context for a question: what a reader (any LLM) should see."""

    question: str
    segments: list[ContextSegment]
    text: str
    tokens: int
    stream_tokens: int
    budget: int

    def prompt(self) -> str:
        """Context and question as one plain-text prompt, for a reader of your choice."""
        return f"{self.text}{SEPARATOR}{self.question}" if self.text else self.question


def assemble(
    entries: Sequence[StoreEntry],
    local_tokens: Sequence[int],
    local_start: int,
    *,
    tokenizer: Any,
    question: str,
    budget: int,
    stream_tokens: int,
    count: Callable[[str], int],
) -> KeyContext:
    """Splice ``entries`` (stream order) and the local window into a key context.

    Overlapping tokens between consecutive pieces are kept once; a gap between pieces is
    marked with :data:`GAP`. The text is decoded with ``tokenizer`` (the scorer's: the stream's
    ids are its ids); ``count`` measures it in the reader's tokens (``KeyContext.tokens``).
    """
    pieces: list[tuple[int, int, tuple[int, ...], ContextSegment]] = []
    for e in entries:
        s = e.segment
        end, tokens = s.end, s.tokens
        if local_tokens and s.start < local_start < s.end:  # the local window follows: trim the overlap
            end, tokens = local_start, s.tokens[: local_start - s.start]
        pieces.append(
            (
                s.start,
                end,
                tokens,
                ContextSegment(seq=s.seq, start=s.start, end=end, score=e.score, text="", meta=s.meta),
            )
        )
    if local_tokens:
        end = local_start + len(local_tokens)
        pieces.append(
            (
                local_start,
                end,
                tuple(local_tokens),
                ContextSegment(seq=-1, start=local_start, end=end, score=None, text="", local=True),
            )
        )
    pieces.sort(key=lambda p: (p[0], p[1]))
    runs: list[list[int]] = []  # contiguous stretches of the stream, decoded whole (no split characters)
    out: list[ContextSegment] = []
    cursor: int | None = None  # stream offset just after the last token placed
    for start, end, tokens, info in pieces:
        if cursor is not None and end <= cursor:
            continue  # fully covered by what is already placed
        skip = 0
        if cursor is None or start > cursor:
            runs.append([])
        else:
            skip = cursor - start
        kept = list(tokens[skip:])
        runs[-1].extend(kept)
        out.append(msgspec.structs.replace(info, start=start + skip, text=tokenizer.decode(kept)))
        cursor = end
    text = GAP.join(tokenizer.decode(run) for run in runs)
    return KeyContext(
        question=question,
        segments=out,
        text=text,
        tokens=count(text) if text else 0,
        stream_tokens=stream_tokens,
        budget=budget,
    )


SHORT_ANSWER_INSTRUCTION = (
    "Answer the question using only the text above. Reply with the answer alone (the exact name, number, "
    "code or phrase from the text), without explanation."
)
"""What a ``short`` answer asks of a chat reader, between the key context and the question."""

_SENTINEL = "\x00xl3m-content\x00"
"""Stands for the user's content while the chat template is rendered (then split off)."""


class Reader:
    """Generates answers from a key context with one causal LM on one device.

    The key context arrives as *text* (decoded with the scorer's tokenizer) and is encoded
    with this reader's own tokenizer, so scorer and reader may have different vocabularies.
    Everything that came from the stream (the context, and the question) is encoded as data:
    special-token strings in it stay plain text, so stream text cannot forge chat turns. Only
    the chat template's own markup becomes control tokens.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        window: int,
        prompt_style: str = "auto",
        answer_style: str = "short",
    ) -> None:
        if prompt_style not in ("auto", "plain", "chat"):
            raise ValueError(f"prompt_style must be 'auto', 'plain' or 'chat', got {prompt_style!r}")
        if answer_style not in ("short", "free"):
            raise ValueError(f"answer_style must be 'short' or 'free', got {answer_style!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_style == "chat" and not has_template:
            raise ValueError("reader_prompt='chat' needs a tokenizer with a chat template")
        if prompt_style == "auto" and not has_template:
            prompt_style = "plain"
        self.model = model
        self.tokenizer = tokenizer
        self.window = window
        self.prompt_style = prompt_style
        self.answer_style = answer_style
        self.device = next(model.parameters()).device
        eos = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, (list, tuple)):
                eos.update(int(x) for x in source)
        self.eos_ids = frozenset(eos)
        self._data = data_tokenizer(tokenizer)
        self._bos = list(bos_prefix(tokenizer))
        self._chat = self._chat_frame() if has_template else None
        # transformers renamed `past_key_values` to `cache`; pass whichever this model's forward takes
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    # --- prompts -----------------------------------------------------------------------
    def _chat_frame(self) -> tuple[list[int], list[int]]:
        """The chat template's ids before and after a user turn's content (its markup only)."""
        messages = [{"role": "user", "content": _SENTINEL}]
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not isinstance(rendered, str) or rendered.count(_SENTINEL) != 1:
            raise ValueError("the reader's chat template does not place the user's content once, verbatim")
        before, after = rendered.split(_SENTINEL)
        encode = self.tokenizer.encode
        return list(encode(before, add_special_tokens=False)), list(encode(after, add_special_tokens=False))

    def style_for(self, question: str) -> str:
        """``plain`` or ``chat`` for this question.

        ``auto`` uses the chat template for a real question (ending in "?") and a plain
        continuation for a cue that ends mid-sentence ("... The pass key is"), which the model
        should simply continue (docs/METHOD.md has the measurements).
        """
        if self.prompt_style != "auto":
            return self.prompt_style
        return "chat" if _is_question(question) else "plain"

    def stop_for(self, question: str) -> tuple[str, ...]:
        """Stop strings when the config gives none: a short answer or a continuation ends with its
        line, and a short continuation of a cue ("... The pass key is") with its sentence too (the
        filler after a passkey is one long line: without it the reader went on repeating it)."""
        plain = self.style_for(question) == "plain"
        if self.answer_style == "short" and plain and not _is_question(question):
            return ("\n", ". ")
        if self.answer_style == "short" or plain:
            return ("\n",)
        return ()

    def encode(self, text: str) -> list[int]:
        """``text`` in this reader's tokens, as data (special-token strings stay text)."""
        return self._data.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def count(self, text: str) -> int:
        """How many of this reader's tokens ``text`` takes (what the key-context budget counts)."""
        return len(self.encode(text))

    def content(self, context: str, question: str) -> str:
        """The text the reader is given: the key context and the question, framed for the style."""
        style = self.style_for(question)
        if style == "chat":
            body = f"{SHORT_ANSWER_INSTRUCTION}\n\nQuestion: {question}" if self.answer_style == "short" else question
        elif _is_question(question):  # plain text, a real question: a base model continues "Answer:"
            body = f"Question: {question}\nAnswer:"
        else:  # a cue to continue ("... The pass key is")
            body = question
        return f"{context}{SEPARATOR}{body}" if context else body

    def prompt(self, context: str, question: str) -> list[int]:
        """The reader's prompt ids for a key context (text) and a question."""
        data = self.encode(self.content(context, question))
        if self.style_for(question) == "chat":
            assert self._chat is not None
            before, after = self._chat
            return before + data + after
        return self._bos + data

    def room(self, question: str, max_new_tokens: int) -> int:
        """Tokens left for the key context in the window, after the prompt's frame, the question
        and the answer (a few tokens are kept back: text joined at the separator may merge)."""
        return self.window - max_new_tokens - len(self.prompt("", question)) - self.count(SEPARATOR) - 2

    def question_tokens(self, question: str) -> int:
        return self.count(question)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        stop: Sequence[str] = (),
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield the answer as text pieces.

        Ends at EOS, after ``max_new_tokens``, when ``should_stop()`` turns true, or at the first
        ``stop`` string that appears after the answer's first non-blank character (the stop
        string itself is not yielded).
        """
        from transformers import DynamicCache

        if len(prompt_ids) + max_new_tokens > self.window:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens + {max_new_tokens} new tokens exceeds the reader's "
                f"window of {self.window}"
            )
        generator = torch.Generator(device="cpu").manual_seed(seed)
        cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
        produced: list[int] = []
        stops = _StopStrings(stop)
        for _ in range(max_new_tokens):
            if should_stop():
                return
            logits = out.logits[0, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator).item())
            else:
                token = int(torch.argmax(logits).item())
            if token in self.eos_ids:
                break
            produced.append(token)
            text = self.tokenizer.decode(produced, skip_special_tokens=True)
            if piece := stops.step(text, hold=text.endswith("\ufffd")):  # (a split UTF-8 character)
                yield piece
            if stops.stopped:
                return
            step = torch.tensor([[token]], dtype=torch.long, device=self.device)
            out = self.model(input_ids=step, use_cache=True, **{self._cache_arg: cache})
        if piece := stops.rest(self.tokenizer.decode(produced, skip_special_tokens=True)):
            yield piece


def _is_question(text: str) -> bool:
    """A real question (ends in "?"), not a cue for the model to continue."""
    return text.rstrip().endswith("?")


class _StopStrings:
    """A growing answer passed on in pieces with its stop strings applied (the local and the
    remote reader's one rule): text that may still begin a stop string is held back, and the
    answer ends at the first stop string after its first non-blank character (not passed on)."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = stop
        self._emitted = ""
        self.stopped = False

    def step(self, text: str, *, hold: bool = False) -> str:
        """The new piece of ``text`` (the whole answer so far) that may be passed on now ("" for
        none); ``stopped`` is set at a stop string. ``hold``: pass nothing on yet."""
        cut = _stop_index(text, self._stop)
        if cut is not None:
            self.stopped = True
            return text[len(self._emitted) : cut] if cut > len(self._emitted) else ""
        safe = len(text) - _partial_stop(text, self._stop)
        if hold or safe <= len(self._emitted):
            return ""
        piece = text[len(self._emitted) : safe]
        self._emitted = text[:safe]
        return piece

    def rest(self, text: str) -> str:
        """At the end of the answer ``text``: what was held back and not passed on yet."""
        if len(text) > len(self._emitted) and text.startswith(self._emitted):
            return text[len(self._emitted) :]
        return ""


def _stop_index(text: str, stop: Sequence[str]) -> int | None:
    """Where the first stop string begins, counting only after the first non-blank character."""
    begin = len(text) - len(text.lstrip())
    if begin == len(text):
        return None
    found = [i for s in stop if (i := text.find(s, begin)) >= 0]
    return min(found) if found else None


def _partial_stop(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best
