"""Replies in flight at the API: the deltas of one or many choices, interleaved as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from parley.engines.base import GenerationChunk
from parley.serving.cluster_errors import WorkerFailed


@dataclass
class Delta:
    """A delta of one choice."""

    index: int
    chunk: GenerationChunk


class Reply:
    """One choice: a worker stream whose first delta has been read, so that errors the worker
    reports at once (bad parameters, prompt too long, overloaded) become an HTTP status before
    any response header is sent."""

    def __init__(self, index: int, chunks: AsyncIterator[GenerationChunk]):
        self.index = index
        self._chunks = chunks
        self._first: GenerationChunk | None = None

    async def start(self) -> None:
        try:
            self._first = await anext(self._chunks)
        except StopAsyncIteration:
            raise WorkerFailed("the worker closed the reply without a result") from None

    async def deltas(self) -> AsyncIterator[Delta]:
        assert self._first is not None, "start() first"
        chunk = self._first
        yield Delta(self.index, chunk)
        if chunk.finish_reason is None:
            async for chunk in self._chunks:
                yield Delta(self.index, chunk)
                if chunk.finish_reason is not None:
                    break
        if chunk.finish_reason is None:
            raise WorkerFailed("the worker ended the reply without a finish reason")

    async def aclose(self) -> None:
        await self._chunks.aclose()


async def start_replies(replies: list[Reply]) -> None:
    """Start all choices together; if any fails, close them all and raise its error."""
    results = await asyncio.gather(*(r.start() for r in replies), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        for reply in replies:
            await reply.aclose()
        raise failure


async def merged_deltas(replies: list[Reply]) -> AsyncIterator[Delta]:
    """Deltas of all choices, interleaved as they arrive. Closing this closes every reply."""
    if len(replies) == 1:
        try:
            async for delta in replies[0].deltas():
                yield delta
        finally:
            await replies[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(reply: Reply) -> None:
        try:
            async for delta in reply.deltas():
                await queue.put(delta)
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(r)) for r in replies]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for reply in replies:
            await reply.aclose()
