"""Replies being written by this web process, one per conversation at most.

A reply runs as a task of its own, not inside the request that asked for it: the page that asked may
go away (a reload, a closed tab) and the reply is still written to the end and stored. Any number of
listeners follow it (the page that sent the message, the same conversation opened in another tab);
each is first given what was written so far. Stop ends it from any request, stored as stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

log = logging.getLogger(__name__)


class SoFar(NamedTuple):
    """What a reply holds: its answer and a reasoning model's thinking before it (each only ever grows)."""

    text: str = ""
    reasoning: str = ""


class Growth(NamedTuple):
    """What a reply gained since a listener last heard of it."""

    text: str
    reasoning: str


# What a writer reports: the reply so far, each time it grows.
Writer = Callable[[Callable[[SoFar], None]], Awaitable[None]]


class LiveReply:
    def __init__(self, reply_id: int, base: SoFar = SoFar()):
        self.reply_id = reply_id
        self.base = base  # what it continues (Continue); listeners get it in the `started` event
        self.so_far = base
        self.done = asyncio.Event()
        self._listeners: set[asyncio.Queue[SoFar | None]] = set()
        self.task: asyncio.Task | None = None

    def grew(self, so_far: SoFar) -> None:
        self.so_far = so_far
        for queue in self._listeners:
            queue.put_nowait(so_far)

    def finished(self) -> None:
        self.done.set()
        for queue in self._listeners:
            queue.put_nowait(None)

    async def follow(self) -> AsyncIterator[Growth]:
        """What it gained beyond its base so far (when it gained anything), then each time it grows, until the
        reply ends."""
        queue: asyncio.Queue[SoFar | None] = asyncio.Queue()
        self._listeners.add(queue)
        sent = self.base
        try:
            if self.so_far != sent:
                yield _growth(sent, self.so_far)
                sent = self.so_far
            if self.done.is_set():
                return
            while (so_far := await queue.get()) is not None:
                if so_far != sent:
                    yield _growth(sent, so_far)
                    sent = so_far
        finally:
            self._listeners.discard(queue)


def _growth(before: SoFar, now: SoFar) -> Growth:
    return Growth(text=now.text[len(before.text):], reasoning=now.reasoning[len(before.reasoning):])


class LiveReplies:
    def __init__(self) -> None:
        self._by_conversation: dict[str, LiveReply] = {}
        self._claimed: set[str] = set()  # a reply is being set up (stored, then started)

    def get(self, conversation_id: str) -> LiveReply | None:
        return self._by_conversation.get(conversation_id)

    def busy(self, conversation_id: str) -> bool:
        return conversation_id in self._by_conversation or conversation_id in self._claimed

    def claim(self, conversation_id: str) -> bool:
        """Take the conversation for a new reply, before anything is awaited: False when a reply is being
        written or set up there already. `start` (or `release`, when setting up fails) ends the claim."""
        if self.busy(conversation_id):
            return False
        self._claimed.add(conversation_id)
        return True

    def release(self, conversation_id: str) -> None:
        self._claimed.discard(conversation_id)

    def start(self, conversation_id: str, reply_id: int, write: Writer, base: SoFar = SoFar()) -> LiveReply:
        """Run `write` as the conversation's reply; it is given the function to call as the reply grows."""
        live = LiveReply(reply_id, base)
        self._claimed.discard(conversation_id)
        self._by_conversation[conversation_id] = live

        async def run() -> None:
            try:
                await write(live.grew)
            except asyncio.CancelledError:
                pass  # Stop, or shutdown: the writer has stored the reply as stopped
            except Exception:  # noqa: BLE001 - the writer stores its own failures; this is a bug
                log.exception("reply %d failed", reply_id)

        def ended(_task: asyncio.Task) -> None:  # also for a task cancelled before it ran at all
            if self._by_conversation.get(conversation_id) is live:
                del self._by_conversation[conversation_id]
            live.finished()

        live.task = asyncio.create_task(run(), name=f"reply-{reply_id}")
        live.task.add_done_callback(ended)
        return live

    async def stop(self, conversation_id: str) -> bool:
        """End the conversation's reply, if one is being written; True when one was. Returns once it is stored."""
        live = self._by_conversation.get(conversation_id)
        if live is None or live.task is None:
            return False
        live.task.cancel()
        await live.done.wait()
        return True

    async def stop_all(self) -> None:
        """At shutdown: every reply ends, stored as stopped."""
        for conversation_id in list(self._by_conversation):
            with contextlib.suppress(Exception):
                await self.stop(conversation_id)
