"""The input of ``ask`` and ``ingest``: a file or stdin fed to the engine, resumed in a state directory."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from typing import Any

from .output import Progress


async def feed_input(engine: Any, args: argparse.Namespace, stats: Any, show: bool) -> Resume | None:
    """Feed PATH (or stdin) to the engine, as text or as JSON-lines records, then flush.

    With a state directory a file is resumed (see :class:`Resume`); the resume is returned.
    """
    from contextlib import aclosing

    from ..sources import jsonl_records, read_lines, read_text

    total = os.path.getsize(args.path) if args.path != "-" else None
    if args.jsonl:
        source = jsonl_records(read_lines(args.path, stats=stats), stats=stats)
    else:
        source = read_text(args.path, stats=stats)
    resume = Resume(engine, args) if engine.recovery is not None and args.path != "-" else None

    async def unheld() -> AsyncIterator[Any]:
        """The input's chunks (their parts) the state does not hold yet, for ``Engine.process``."""
        async with aclosing(source) as chunks:
            async for chunk in chunks:
                if resume is not None and (chunk := await resume.take(chunk)) is None:
                    continue  # the state already holds it
                yield chunk
                bar.update(stats.bytes_read, engine.stream_tokens)  # (process has fed it)
        if resume is not None:
            await resume.finish()  # at the input's end, before process flushes: as a loop of feeds did

    with Progress(show, total, "reading") as bar:
        async with aclosing(unheld()) as chunks:
            await engine.process(chunks, flush=True)
        bar.update(stats.bytes_read, engine.stream_tokens)
    return resume


class Resume:
    """Where a file being fed into a state directory starts, so that an ingest killed midway and
    run again (or run again on a file that has grown) takes each character of it once.

    Marks in the log (``Engine.mark_input``) name the file (format, real path, device, inode),
    say how many characters of its text the stream held and hash them. The file is read again
    from its start through the same decoding, so its text is the same, and the characters the
    state holds are skipped after checking their hash; what follows is fed. A file rewritten
    since (the hash differs, or it is shorter) is refused unless ``--from-start``.
    """

    def __init__(self, engine: Any, args: argparse.Namespace) -> None:
        import hashlib

        st = os.stat(args.path)
        self.engine = engine
        self.path = args.path
        self.source = f"{'jsonl' if args.jsonl else 'text'}:{os.path.realpath(args.path)} ({st.st_dev}:{st.st_ino})"
        mark, taken = engine.input_resume(self.source) if not args.from_start else (None, 0)
        self.previous = mark
        self.skip = taken
        """Characters of the file's text the state holds."""
        self.seen = 0  # characters of the file's text read so far
        self.fed = False
        self._hash = hashlib.sha256()
        self._skip_digest = ""
        checks = [(self.skip, self._at_skip)]
        if self.previous is not None and self.previous.digest:
            checks.append((self.previous.taken, self._verify))
        self._checks = sorted(checks, key=lambda check: check[0])
        self._run_checks(0)

    async def take(self, chunk: Any) -> Any:
        """``chunk`` or its part the state does not hold yet (None: it holds all of it)."""
        from ..sources import TextChunk

        text = chunk.text
        start = self.seen
        self.seen += len(text)
        at = start
        while self._checks and self._checks[0][0] <= self.seen:
            point = self._checks[0][0]
            self._hash.update(text[at - start : point - start].encode("utf-8", "surrogatepass"))
            at = point
            self._run_checks(point)
        self._hash.update(text[at - start :].encode("utf-8", "surrogatepass"))
        if self.seen <= self.skip:
            return None
        if not self.fed:
            self.fed = True
            await self.engine.mark_input(self.source, self.skip, digest=self._skip_digest)
        if start >= self.skip:
            return chunk
        return TextChunk(text=text[self.skip - start :], meta=chunk.meta)

    def _run_checks(self, point: int) -> None:
        while self._checks and self._checks[0][0] == point:
            self._checks.pop(0)[1]()

    def _verify(self) -> None:
        from ..errors import InputError

        assert self.previous is not None
        if self._hash.hexdigest() != self.previous.digest:
            raise InputError(
                f"{self.path} changed since it was ingested into this state (its first {self.previous.taken:,} "
                f"characters differ from those taken): nothing was added; use --from-start to take it again"
            )

    def _at_skip(self) -> None:
        self._skip_digest = self._hash.hexdigest()

    async def finish(self) -> None:
        """At the end of the file: refuse one shorter than what the state holds; mark it complete."""
        from ..errors import InputError

        if self.seen < self.skip:
            raise InputError(
                f"{self.path} holds {self.seen:,} characters, fewer than the {self.skip:,} this state already took "
                f"from it (truncated or replaced): nothing was added; use --from-start to take it again"
            )
        if self.fed or self.previous is None or not self.previous.complete:
            await self.engine.mark_input(self.source, self.seen, complete=True, digest=self._hash.hexdigest())

    def notes(self) -> list[str]:
        """What a user should know about where the file was resumed."""
        if self.previous is None or not self.skip:
            return []
        if not self.fed:
            return [f"nothing new in {self.path}: the state already holds all of it"]
        if self.previous.complete:
            return [
                f"took only what was appended to {self.path} since it was last ingested (from character {self.skip:,})"
            ]
        return [f"resumed {self.path} at character {self.skip:,}, where an earlier run on it stopped"]
