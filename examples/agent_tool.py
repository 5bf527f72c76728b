"""An agent tool backed by XL3M memory: the agent writes down what it learns and recalls it by question.

    python examples/agent_tool.py                 # a scripted agent run with the default model
    python examples/agent_tool.py --model DIR     # another model (a local directory, .gguf, ...)

``MemoryTool`` exposes two tools in the JSON-schema form that function-calling LLM APIs take
(``TOOLS``) and executes their calls: ``remember`` (a note or a document) and ``recall`` (the
key context for a question: the remembered passages that matter for it, in order, with where
each came from; optionally the small model's own short answer). The memory is bounded
however much the agent writes. Here a scripted "agent" stands in for the LLM that would
choose the calls.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import anyio

from xl3m_stream.evaluate.haystack import prose_units
from xl3m_stream.memory import AgentMemory

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "remember",
            "description": "Store a note or a document in long-term memory.",
            "parameters": {
                "type": "object",
                "properties": {
                    "text": {"type": "string", "description": "what to remember"},
                    "document": {"type": "string", "description": "a document name, if the text is a document"},
                },
                "required": ["text"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "recall",
            "description": "Find what long-term memory holds about a question.",
            "parameters": {
                "type": "object",
                "properties": {
                    "question": {"type": "string"},
                    "answer": {"type": "boolean", "description": "also answer the question from what was found"},
                },
                "required": ["question"],
            },
        },
    },
]


class MemoryTool:
    """Executes ``remember`` / ``recall`` tool calls against an :class:`AgentMemory`."""

    def __init__(self, memory: AgentMemory) -> None:
        self.memory = memory

    async def call(self, name: str, arguments: dict[str, Any] | str) -> str:
        """Run one tool call; returns its result as JSON text (what goes back to the LLM)."""
        args = json.loads(arguments) if isinstance(arguments, str) else arguments
        if name == "remember":
            if args.get("document"):
                tokens = await self.memory.add_document(args["text"], name=args["document"])
            else:
                tokens = await self.memory.add(args["text"], role="note")
            return json.dumps({"stored_tokens": tokens, "memory_tokens": self.memory.tokens})
        if name == "recall":
            context = await self.memory.recall(args["question"])
            result: dict[str, Any] = {
                "context": context.text,
                "sources": [
                    {"tokens": [s.start, s.end], "score": s.score, **(s.meta or {})}
                    for s in context.segments
                    if not s.local
                ],
            }
            if args.get("answer"):
                result["answer"] = (await self.memory.answer(args["question"])).text.strip()
            return json.dumps(result)
        return json.dumps({"error": f"unknown tool {name!r}"})


def handbook(seed: int, sentences: int) -> str:
    """A long document with one fact in it."""
    units = prose_units(random.Random(seed))
    text = [next(units) for _ in range(sentences)]
    text.insert(sentences * 2 // 3, "The spare key to the server room is kept in locker 4417. ")
    return "".join(text)


async def main(args: argparse.Namespace) -> None:
    async with AgentMemory(model=args.model, dtype="float32") as memory:
        tool = MemoryTool(memory)
        script = [
            ("remember", {"text": "The customer's name is Dana Whitfield; she prefers email over phone."}),
            ("remember", {"text": handbook(args.seed, args.sentences), "document": "facilities-handbook.txt"}),
            ("remember", {"text": "The quarterly report is due on the 14th."}),
            ("recall", {"question": "Where is the spare key to the server room kept?", "answer": True}),
        ]
        print("tools offered to the LLM:", ", ".join(t["function"]["name"] for t in TOOLS))
        for name, arguments in script:
            print(f"\n>>> {name}({json.dumps(arguments)[:100]}{'...' if len(json.dumps(arguments)) > 100 else ''})")
            result = json.loads(await tool.call(name, arguments))
            if name == "recall":
                for source in result["sources"]:
                    print(f"    source {source}")
                print(f"    context: {result['context'][:300]!r}")
                print(f"    answer: {result.get('answer')!r}")
            else:
                print(f"    {result}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="An agent tool backed by XL3M memory.")
    p.add_argument("--model", default="default", help="model (default: the library's default)")
    p.add_argument("--sentences", type=int, default=300, help="sentences in the handbook document (default 300)")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse())
