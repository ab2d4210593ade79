"""How many threads llama.cpp decodes with, chosen by measured speed while it serves.

llama.cpp's CPU threads meet at a barrier after every operation of a decoding step (hundreds a
token). When another process takes a core, a thread waiting there for a descheduled peer waits out
the scheduler's time slice, again and again: on a 2-core machine, with `parley serve`'s other
processes and one busy process beside it, a two-thread decoding step took up to 3 s, where one
thread kept about 47 tokens/s. No fixed count is right: all cores are fastest on an idle machine
(68 against 49 tokens/s for one stream on 2 cores), fewer when something else runs.

So the count is tried: after `probe_every` decoding steps, up to `probe_steps` steps run with a
neighbouring count, and the faster of the two (tokens over seconds, beyond `margin`) is kept. A
probe that is already slower than the current count by more than `abort_factor` ends at once, and
each failed probe doubles the wait before the next (up to `max_probe_every`), so a count that
stalls costs one step now and then, not a minute. A step `stall_factor` times slower than the last
ones of its batch size (a core was just taken) starts a probe at once, and so do `probe_steps` steps
`SLOWDOWN_FACTOR` times slower than usual (a busy process beside sixteen streams slows two threads'
steps 3-4x, not 10x; a wave of sixteen replies slows its steps about 1.6x as they grow, over a
hundred steps). Steps are compared only with steps of their own batch size (in powers of two):
sixteen streams take 80 ms a step, one stream 11 ms, and one stream beside a busy process on two
stalling threads 670 ms, which beside the 80 ms steps would not look like a stall, and whose
tokens/s beside theirs would make any probe look slow.

A probe costs: on an idle 2-core machine one thread decodes one stream at 50 tokens/s where two do 90,
so the periodic probes of fewer threads run only while other processes keep at least
`FEWER_THREADS_LOAD` of a core busy (a stall still probes at once); and more threads are not tried
while other processes keep the cores they would need busy.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

import psutil


def usable_cores() -> int:
    """The cores this process should compute on: $OMP_NUM_THREADS where set (Ray sets it to an actor's `num_cpus`;
    a container's launcher may set it to its CPU quota), else the cores it may run on."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


TYPICAL_WEIGHT = 0.01  # of each step in the EMA of a batch size's usual step time
SLOWDOWN_FACTOR = 2.0  # the last probe_steps steps this much slower than usual: probe at once
FEWER_THREADS_LOAD = 0.5  # cores other processes keep busy before fewer threads are tried without a stall


class ThreadTuner:
    def __init__(self, most: int, probe_every: int = 64, probe_steps: int = 8, margin: float = 0.15,
                 abort_factor: float = 3.0, stall_factor: float = 10.0, max_probe_every: int = 128,
                 others_busy: Callable[[], float] | None = None):
        """`most`: the most threads to use (the cores); `probe_every` 0: always `most`, never probed;
        `others_busy`: the cores other processes have kept busy lately (a count that would need more than the
        cores left is not probed)."""
        self.most = max(1, most)
        self._others_busy = others_busy
        self.current = self.most
        self._base_every = self._every = probe_every
        self._max_every = max(probe_every, max_probe_every)
        self._probe_steps, self._margin, self._abort, self._stall = probe_steps, margin, abort_factor, stall_factor
        # (tokens, seconds) of the last steps at `current`, and of the probe's: compared by tokens over seconds,
        # so that a few steps stalled for a whole time slice weigh what they cost
        self._recent: deque[tuple[int, float]] = deque(maxlen=probe_steps)
        self._size = 0  # the batch-size class (tokens.bit_length()) of the steps in `_recent`
        self._typical: dict[tuple[int, int], float] = {}  # (threads, size class): a step's usual seconds
        self._probe: list[tuple[int, float]] = []
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
        size = tokens.bit_length()
        if self._candidate is not None:
            if size == self._size:
                return self._probed(tokens, seconds)
            self._candidate, self._probe = None, []  # the batch changed under the probe: no fair comparison,
            return None  # no verdict, and this step (at the probed count) says nothing of the current one
        if size != self._size:
            self._recent.clear()
            self._size = size
        key = (self.current, size)
        typical = self._typical.get(key)
        self._recent.append((tokens, seconds))
        # a slow EMA, stalls included: a lasting slowdown the probes cannot help becomes the new normal
        self._typical[key] = seconds if typical is None else (1 - TYPICAL_WEIGHT) * typical + TYPICAL_WEIGHT * seconds
        full = len(self._recent) == self._recent.maxlen
        stalled = typical is not None and (seconds > self._stall * typical
                                           or full and _step_time(self._recent) > SLOWDOWN_FACTOR * typical)
        if stalled:
            self._steps = self._every = self._base_every  # something changed: probe at once,
            self._direction = -1  # fewer threads first,
            slow = [step for step in self._recent if step[1] > 1.5 * typical]  # against the slow steps alone
            self._recent.clear()
            self._recent.extend(slow)
            self._typical[key] = _step_time(slow)  # and take the new pace as normal from now on
        self._steps += 1
        if self._every and self.most > 1 and (stalled or self._steps >= self._every and full):
            self._steps = 0
            candidate = self._next_candidate()
            # a core counts as taken when other processes keep (nearly) all of it busy; the API streaming
            # this engine's replies takes part of one, and more threads still win then
            others = self._others_busy() if self._others_busy else None
            if others is not None and candidate > self.current and candidate > self.most - int(others + 0.1):
                self._every = min(self._every * 2, self._max_every)  # no free core for it: as a failed probe
            elif others is not None and candidate < self.current and not stalled and others < FEWER_THREADS_LOAD:
                self._every = min(self._every * 2, self._max_every)  # the cores are free: fewer cannot win
            else:
                self._candidate = candidate
        return None

    def _probed(self, tokens: int, seconds: float) -> int | None:
        self._probe.append((tokens, seconds))
        current_rate = _rate(self._recent)
        rate = _rate(self._probe)
        if rate * self._abort < current_rate or len(self._probe) >= self._probe_steps:
            candidate, probe, self._candidate, self._probe = self._candidate, self._probe, None, []
            if rate > current_rate * (1 + self._margin):
                self.current, self._every = candidate, self._base_every
                self._recent.clear()
                self._recent.extend(probe)  # the new count's steps so far
                return candidate
            self._every = min(self._every * 2, self._max_every)  # failed: wait longer before the next probe
        return None

    def _next_candidate(self) -> int:
        for _ in range(2):
            candidate = self.current + self._direction
            self._direction = -self._direction
            if 1 <= candidate <= self.most:
                return candidate
        return self.current


def _rate(steps) -> float:
    return sum(t for t, _ in steps) / sum(s for _, s in steps)


def _step_time(steps) -> float:
    return sum(s for _, s in steps) / len(steps)


class OtherProcessesLoad:
    """The cores that processes other than this one kept busy since the last call (from /proc/stat and this
    process's own CPU times, through psutil)."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        mine = self._me.cpu_times()
        return time.monotonic(), busy, mine.user + mine.system

    def __call__(self) -> float:
        now = self._sample()
        (t0, busy0, mine0), (t1, busy1, mine1) = self._last, now
        self._last = now
        return max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / (t1 - t0)) if t1 > t0 else 0.0
