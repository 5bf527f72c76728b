"""A chat assistant with unbounded history: every turn goes into XL3M memory, and each reply is
written from the turns that matter for the user's message, however long ago they were said.

    python examples/chat_assistant.py --demo        # a scripted chat: a fact early, small talk, the question
    python examples/chat_assistant.py               # chat on the terminal (an empty line or Ctrl-D ends)
    python examples/chat_assistant.py --model DIR   # another model (a local directory, .gguf, ...)

The model only ever sees a short window: the recalled turns plus the latest exchange. The
history can grow without bound; the memory keeps a bounded store of candidate turns. (The
default model is a 135M-parameter one: its replies are short and often naive, but the turns it
is shown are the right ones, as ``--demo`` prints.)
"""

from __future__ import annotations

import argparse
import random

from xl3m_stream.memory import SyncAgentMemory

SMALL_TALK = [
    "How was your weekend?",
    "The weather has been lovely lately.",
    "I tried a new pasta recipe yesterday.",
    "Traffic was terrible this morning.",
    "Do you like hiking in the mountains?",
    "My neighbour's cat keeps visiting our garden.",
    "I am reading a novel about sailors.",
    "The coffee machine at work is broken again.",
]


def reply(memory: SyncAgentMemory, message: str, *, show_context: bool) -> str:
    memory.add(message, role="user")
    answer = memory.answer(message)
    if show_context:
        for seg in answer.segments:
            where = "recent" if seg.local else f"turn {(seg.meta or {}).get('turn')}"
            print(f"      [{where}] {seg.text.strip()[:90]!r}")
    text = answer.text.strip() or "(no reply)"
    memory.add(text, role="assistant")
    return text


def demo(memory: SyncAgentMemory, turns: int, seed: int) -> None:
    rng = random.Random(seed)
    memory.add("Please remember that my locker code is 4812.", role="user")
    memory.add("Sure, I will remember that your locker code is 4812.", role="assistant")
    for _ in range(turns):
        memory.add(rng.choice(SMALL_TALK), role="user")
        memory.add("That sounds nice.", role="assistant")
    print(f"history: {memory.messages} messages, {memory.tokens:,} tokens")
    question = "What is my locker code?"
    print(f"user: {question}")
    print("      recalled for the reply:")
    print(f"assistant: {reply(memory, question, show_context=True)}")


def chat(memory: SyncAgentMemory) -> None:
    print("chat with unbounded memory (an empty line or Ctrl-D ends)")
    while True:
        try:
            message = input("you: ").strip()
        except EOFError:
            break
        if not message:
            break
        print(f"assistant: {reply(memory, message, show_context=False)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="A chat assistant with unbounded history.")
    p.add_argument("--model", default="default", help="model (default: the library's default)")
    p.add_argument("--demo", action="store_true", help="run a scripted conversation instead of reading stdin")
    p.add_argument("--turns", type=int, default=120, help="--demo: small-talk exchanges after the fact (default 120)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with SyncAgentMemory(model=args.model, dtype="float32", max_new_tokens=24) as memory:
        if args.demo:
            demo(memory, args.turns, args.seed)
        else:
            chat(memory)


if __name__ == "__main__":
    main()
