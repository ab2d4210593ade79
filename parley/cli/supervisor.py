"""Child processes of `parley serve`: started, watched, restarted with back-off when they die.

A child that dies is logged with its exit code or signal and started again after a delay that
grows with each crash in a row (a crash soon after starting counts as "fast"). After
`max_fast_crashes` fast crashes in a row the supervisor gives up on that child with a clear
message, and the other children keep serving. A child that ran for a while before dying starts
its count afresh.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("parley.serve")


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.5  # the first restart after a death
    max_delay_s: float = 30.0  # doubling up to this
    fast_crash_s: float = 60.0  # dying sooner than this after starting is a fast crash
    max_fast_crashes: int = 5  # this many fast crashes in a row: give up on the child

    def delay(self, crashes_in_a_row: int) -> float:
        return min(self.first_delay_s * 2 ** max(crashes_in_a_row - 1, 0), self.max_delay_s)


def describe_exit(returncode: int) -> str:
    """'killed by SIGKILL' or 'exit code 3'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict = field(default_factory=dict)
    address: str | None = None  # where it serves (a worker: its name at the controller)
    # Called after the child died (e.g. to tell the controller at once); must not raise.
    on_death: Callable[[Child, str], None] | None = None
    # Whether a restarted child serves again (polled until true, to log when it is back).
    ready: Callable[[], bool] | None = None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    crashes_in_a_row: int = 0
    restarts: int = 0
    restart_at: float | None = None  # when a dead child is due to start again
    died_at: float | None = None
    awaiting_ready: bool = False
    given_up: bool = False

    def start(self) -> None:
        # A session of its own: Ctrl-C in the terminal reaches only the launcher, which then
        # stops each child once, in order.
        self.proc = subprocess.Popen(self.argv, start_new_session=True, env={**os.environ, **self.env})
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    """Watches children (call `check()` periodically); restarts the dead ones per the policy."""

    def __init__(self, children: list[Child], policy: RestartPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] = print):
        self.children = children
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._say = say

    def check(self) -> None:
        now = self._clock()
        for child in self.children:
            if child.given_up:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    try:
                        child.start()
                    except OSError as exc:  # counts as a crash: back off and try again, or give up
                        self._say(f"{child.name} could not be started again: {exc}")
                        child.started_at = now
                        self._died(child, now, f"could not start ({exc})")
                        continue
                    child.awaiting_ready = child.ready is not None
                continue
            if child.alive():
                if child.awaiting_ready and self._is_ready(child):
                    child.awaiting_ready = False
                    self._say(f"{child.name} is serving again, {now - child.died_at:.1f} s after it died")
                continue
            if child.proc is None:
                continue
            self._died(child, now, describe_exit(child.proc.returncode))

    def _died(self, child: Child, now: float, how: str) -> None:
        lived = now - child.started_at
        child.died_at = now
        child.awaiting_ready = False
        child.crashes_in_a_row = child.crashes_in_a_row + 1 if lived < self.policy.fast_crash_s else 1
        if child.on_death is not None:
            try:
                child.on_death(child, how)
            except Exception as exc:  # noqa: BLE001 - a failing hook must not stop the supervision
                log.warning("after %s died: %s", child.name, exc)
        if child.crashes_in_a_row >= self.policy.max_fast_crashes:
            child.given_up = True
            self._say(f"{child.name} (pid {child.proc.pid}) {how} after {lived:.1f} s: it crashed "
                      f"{child.crashes_in_a_row} times in a row within {self.policy.fast_crash_s:.0f} s of starting, "
                      "so it is not restarted again; the rest keeps serving. Fix the cause (see its log above) "
                      "and restart parley serve.")
            return
        delay = self.policy.delay(child.crashes_in_a_row)
        child.restart_at = now + delay
        self._say(f"{child.name} (pid {child.proc.pid}) {how} after {lived:.1f} s; restarting it in {delay:.1f} s "
                  f"(crash {child.crashes_in_a_row} of {self.policy.max_fast_crashes} before giving up)")

    @staticmethod
    def _is_ready(child: Child) -> bool:
        try:
            return bool(child.ready())
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            return False
