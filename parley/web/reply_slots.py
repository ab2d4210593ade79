"""How many replies the web UI streams at once, and how many may wait for a turn.

Every handler that streams a reply (chat, battle, side-by-side) takes one slot per stream. Up to
`max_running` streams run at once (the workers batch them); up to `max_waiting` more wait their turn
in arrival order; beyond that a request is refused at once with a "busy" message instead of
queueing without bound. The limits are per web process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
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
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return sum(n for n, _ in self._waiters)

    @contextlib.asynccontextmanager
    async def hold(self, n: int = 1) -> AsyncIterator[None]:
        """Hold `n` slots (a battle streams two replies) while the block runs; raises Busy at once when
        they cannot even wait."""
        n = min(n, self.max_running)
        if not self._waiters and self.running + n <= self.max_running:
            self.running += n
        elif self.waiting + n > self.max_waiting:
            raise Busy(self.running, self.waiting)
        else:
            turn = asyncio.get_running_loop().create_future()
            self._waiters.append((n, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # granted and cancelled at once: give it back
                    self._release(n)
                else:
                    with contextlib.suppress(ValueError):  # already passed over by a release
                        self._waiters.remove((n, turn))
                    self._grant()  # those behind it may fit now
                raise
        try:
            yield
        finally:
            self._release(n)

    def _release(self, n: int) -> None:
        self.running -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            granted, turn = self._waiters[0]
            if turn.cancelled():
                self._waiters.popleft()
                continue
            if self.running + granted > self.max_running:
                break
            self._waiters.popleft()
            self.running += granted
            turn.set_result(None)
