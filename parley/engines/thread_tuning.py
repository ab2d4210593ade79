"""How many threads llama.cpp decodes with, chosen by measured speed while it serves.

llama.cpp's CPU threads meet at a barrier after every operation of a decoding step (hundreds a
token). When another process takes a core, a thread waiting there for a descheduled peer waits out
the scheduler's time slice, again and again: on a 2-core machine, with `parley serve`'s other
processes and one busy process beside it, two threads fell to under 2 tokens/s where one thread
kept 47. No fixed count is right: all cores are fastest on an idle machine (68 against 49 tokens/s
for one stream on 2 cores), fewer when something else runs. So the count is tried: every
`probe_every` decoding steps, `probe_steps` steps run with a neighbouring count, and the faster of
the two (by tokens a second, beyond `margin`) is kept. Probing costs a few percent at most.
"""

from __future__ import annotations

import statistics
from collections import deque


class ThreadTuner:
    def __init__(self, most: int, probe_every: int = 96, probe_steps: int = 6, margin: float = 0.15):
        """`most`: the most threads to use (the cores); `probe_every` 0: always `most`, never probed."""
        self.most = max(1, most)
        self.current = self.most
        self._probe_every, self._probe_steps, self._margin = probe_every, probe_steps, margin
        self._recent: deque[float] = deque(maxlen=probe_steps)  # tokens/s of the last steps at `current`
        self._probe: list[float] = []
        self._candidate: int | None = None
        self._steps = 0
        self._direction = -1  # the next probe goes down, then up, ... within 1..most

    def threads(self) -> int:
        """The thread count for the next decoding step."""
        return self._candidate if self._candidate is not None else self.current

    def record(self, tokens: int, seconds: float) -> int | None:
        """A decoding step of `tokens` tokens took `seconds`. Returns the new count when it changes."""
        if seconds <= 0 or tokens <= 0:
            return None
        rate = tokens / seconds
        if self._candidate is not None:
            self._probe.append(rate)
            if len(self._probe) < self._probe_steps:
                return None
            candidate, self._candidate = self._candidate, None
            better = statistics.median(self._probe) > statistics.median(self._recent) * (1 + self._margin)
            self._probe = []
            if better:
                self.current = candidate
                self._recent.clear()
                return candidate
            return None
        self._recent.append(rate)
        self._steps += 1
        if self._probe_every and self.most > 1 and self._steps >= self._probe_every and len(self._recent) == self._recent.maxlen:
            self._steps = 0
            self._candidate = self._next_candidate()
        return None

    def _next_candidate(self) -> int:
        for _ in range(2):
            candidate = self.current + self._direction
            self._direction = -self._direction
            if 1 <= candidate <= self.most:
                return candidate
        return self.current
