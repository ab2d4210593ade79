"""How many replies the web UI streams at once, and how many may wait for a turn.

Every handler that streams a reply (chat, battle, side-by-side) takes one slot per stream. Up to
`max_running` streams run at once (the workers batch them); up to `max_waiting` more wait their turn
in arrival order; beyond that a request is refused at once with a "busy" message instead of
queueing without bound. The limits are per web process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Busy(Exception):
    """Every slot is taken and the waiting line is full."""

    def __init__(self, running: int, waiting: int):
        super().__init__(f"parley is busy: {running} replies are being written and {waiting} are waiting. "
                         "Please try again in a moment.")


class ReplySlots:
    def __init__(self, max_running: int, max_waiting: int):
        if max_running < 1 or max_waiting < 0:
            raise ValueError("at least one reply must be able to run, and the waiting line cannot be negative")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(max_running)  # first come, first served

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold a slot while the block runs (waiting for one if need be); raises Busy at once when the
        waiting line is full."""
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise Busy(self.running, self.waiting)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
