"""Replies in flight at the API: text deltas from a worker's cumulative chunks, for one or many choices."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from parley.serving.api_errors import APIError


@dataclass
class Delta:
    index: int
    text: str
    finish_reason: str | None = None
    usage: dict | None = None
    logprobs: list[dict] | None = None  # OpenAI chat shape, for the tokens of this delta
    tool_calls: list[dict] | None = None  # OpenAI's streamed tool-call deltas


def tool_call_deltas(calls: list[dict], seen: list[dict]) -> list[dict]:
    """OpenAI's streamed tool-call deltas between two cumulative lists of calls: a new call
    comes with its id, type and name; after that only argument text is added."""
    out = []
    for i, c in enumerate(calls):
        args = c["function"].get("arguments", "")
        if i >= len(seen):
            out.append({"index": i, "id": c["id"], "type": "function",
                        "function": {"name": c["function"]["name"], "arguments": args}})
        else:
            before = seen[i]["function"].get("arguments", "")
            if args != before:
                out.append({"index": i, "function": {"arguments": args[len(before):] if args.startswith(before) else args}})
    return out


class Reply:
    """One choice: a worker stream whose first chunk has been read, so that errors the worker
    reports at once (bad parameters, prompt too long, overloaded) become an HTTP status before
    any response header is sent."""

    def __init__(self, index: int, chunks: AsyncIterator[dict]):
        self.index = index
        self._chunks = chunks
        self._first: dict | None = None

    async def start(self) -> None:
        try:
            self._first = await anext(self._chunks)
        except StopAsyncIteration:
            raise APIError(502, "the worker closed the reply without a result", type="server_error") from None
        if self._first.get("error_code"):
            raise APIError.from_worker(self._first["error_code"], self._first.get("text", ""))

    async def deltas(self) -> AsyncIterator[Delta]:
        seen = ""
        seen_calls: list[dict] = []

        def delta_of(chunk: dict) -> Delta:
            nonlocal seen, seen_calls
            if chunk.get("error_code"):
                raise APIError.from_worker(chunk["error_code"], chunk.get("text", ""))
            text = chunk.get("text", "")
            new = text[len(seen):] if text.startswith(seen) else text  # cumulative, as FastChat sends it
            seen = text
            calls = None
            if chunk.get("tool_calls"):
                calls = tool_call_deltas(chunk["tool_calls"], seen_calls) or None
                seen_calls = chunk["tool_calls"]
            return Delta(self.index, new, chunk.get("finish_reason"), chunk.get("usage"),
                         chunk.get("token_logprobs"), calls)

        assert self._first is not None, "start() first"
        delta = delta_of(self._first)
        yield delta
        if delta.finish_reason is None:
            async for chunk in self._chunks:
                delta = delta_of(chunk)
                yield delta
                if delta.finish_reason is not None:
                    break
        if delta.finish_reason is None:
            raise APIError(502, "the worker ended the reply without a finish reason", type="server_error")

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
