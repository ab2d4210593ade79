"""The supervisor of `parley serve`: dead children are restarted with back-off, and given up on only
after repeated fast crashes, while the others keep running."""

from __future__ import annotations

import sys
import time

from parley.cli.supervisor import Child, RestartPolicy, Supervisor, describe_exit


def _run_until(supervisor: Supervisor, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the supervisor did not get there in time"
        supervisor.check()
        time.sleep(0.02)


def test_a_child_that_keeps_crashing_is_given_up_on_and_the_others_keep_running():
    said: list[str] = []
    deaths: list[str] = []
    crasher = Child("worker bad", [sys.executable, "-c", "import sys; sys.exit(3)"],
                    on_death=lambda child, how: deaths.append(how))
    steady = Child("api", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor = Supervisor([crasher, steady], RestartPolicy(first_delay_s=0.01, max_delay_s=0.05, max_fast_crashes=3),
                            say=said.append)
    try:
        crasher.start()
        steady.start()
        _run_until(supervisor, lambda: crasher.given_up)
        assert deaths == ["exit code 3"] * 3
        assert crasher.restarts == 2
        assert "restarting it in" in said[0] and "exit code 3" in said[0]
        assert "not restarted again" in said[-1] and "3 times in a row" in said[-1]
        for _ in range(10):  # given up means given up: no more starts
            supervisor.check()
        assert crasher.restarts == 2 and steady.alive()
    finally:
        steady.stop()


def test_a_killed_child_is_restarted_and_reported_back_when_ready():
    said: list[str] = []
    child = Child("worker m", [sys.executable, "-c", "import time; time.sleep(60)"], ready=lambda: True)
    supervisor = Supervisor([child], RestartPolicy(first_delay_s=0.01), say=said.append)
    try:
        child.start()
        first = child.proc.pid
        child.proc.kill()
        child.proc.wait()
        _run_until(supervisor, lambda: any("serving again" in line for line in said))
        assert child.alive() and child.proc.pid != first and child.restarts == 1
        assert f"(pid {first}) killed by SIGKILL" in said[0]
    finally:
        child.stop()


def test_back_off_doubles_up_to_its_cap():
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=4.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(1) == "exit code 1"
