"""llama.cpp's thread count follows measured speed: it drops when fewer threads decode faster (another process
took a core) and comes back when more are faster again; a count given on the command line stays."""

from __future__ import annotations

from parley.engines.thread_tuning import ThreadTuner


def serve(tuner: ThreadTuner, speed: dict[int, float], steps: int, tokens: int = 8) -> list[int]:
    """Decode `steps` steps of `tokens` tokens (the batch), each at `speed[threads]` tokens/s; the counts
    used, step by step."""
    used = []
    for _ in range(steps):
        threads = tuner.threads()
        used.append(threads)
        tuner.record(tokens, tokens / speed[threads])
    return used


def test_it_drops_to_fewer_threads_when_they_are_faster_and_comes_back():
    tuner = ThreadTuner(2, probe_every=20, probe_steps=4)
    assert serve(tuner, {1: 48.0, 2: 68.0}, 200).count(2) >= 160  # idle: 2 threads; the probes of 1 (4 in 24) fail
    assert tuner.current == 2
    busy = serve(tuner, {1: 47.0, 2: 3.0}, 100)  # a core taken: 2 threads stall
    assert tuner.current == 1 and busy[-50:].count(1) >= 40
    serve(tuner, {1: 48.0, 2: 68.0}, 100)  # the core is free again
    assert tuner.current == 2


def test_on_many_cores_it_walks_to_the_fastest_count():
    tuner = ThreadTuner(8, probe_every=10, probe_steps=3)
    speed = {n: 160 - 30 * abs(n - 5) for n in range(1, 9)}  # fastest at 5 (three cores busy elsewhere)
    serve(tuner, speed, 400)
    assert tuner.current == 5


def test_a_given_count_is_never_probed():
    tuner = ThreadTuner(2, probe_every=0)
    assert set(serve(tuner, {1: 90.0, 2: 3.0}, 300)) == {2}


def test_a_count_that_stalls_costs_one_step_a_probe_and_is_probed_ever_more_rarely():
    tuner = ThreadTuner(2, probe_every=16, probe_steps=8)
    serve(tuner, {1: 47.0, 2: 0.3}, 40)  # 2 threads stall (3 s a step of 8... here 27 s): down to 1 at once
    assert tuner.current == 1
    used = serve(tuner, {1: 47.0, 2: 0.3}, 2000)
    stalled = [i for i, n in enumerate(used) if n == 2]
    assert all(b - a > 1 for a, b in zip(stalled, stalled[1:]))  # each probe of 2 ended after its first step
    assert len(stalled) <= 20  # waits of 16, 32, 64, then 128 steps between probes: 1 stalled step in 129
    assert all(b - a >= 128 for a, b in zip(stalled[4:], stalled[5:]))


def test_more_threads_are_not_probed_while_other_processes_keep_the_cores_busy():
    load = {"others": 1.0}
    tuner = ThreadTuner(2, probe_every=16, probe_steps=8, others_busy=lambda: load["others"])
    serve(tuner, {1: 47.0, 2: 0.3}, 40)
    assert tuner.current == 1
    assert serve(tuner, {1: 47.0, 2: 0.3}, 1000).count(2) == 0  # one core busy elsewhere: 2 is never tried
    load["others"] = 0.1
    serve(tuner, {1: 48.0, 2: 68.0}, 600)
    assert tuner.current == 2


def test_the_load_of_other_processes_is_measured():
    import subprocess
    import sys
    import time

    from parley.engines.thread_tuning import OtherProcessesLoad

    load = OtherProcessesLoad()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        assert load() > 0.6  # about one core
    finally:
        busy.kill()
        busy.wait()


def test_fewer_threads_are_not_probed_while_the_other_cores_are_free():
    """On an idle machine a probe of fewer threads only costs (one stream: 8 steps at 50 instead of 90 tokens/s
    every 64): it runs when other processes keep a core's share busy, or at once when a step stalls."""
    load = {"others": 0.2}  # the API streaming the replies
    tuner = ThreadTuner(2, probe_every=16, probe_steps=8, others_busy=lambda: load["others"])
    assert serve(tuner, {1: 48.0, 2: 90.0}, 1000).count(1) == 0
    load["others"] = 1.0  # a busy process: fewer threads are tried, and kept when faster
    serve(tuner, {1: 47.0, 2: 20.0}, 200)
    assert tuner.current == 1
    load["others"] = 0.2
    tuner = ThreadTuner(2, probe_every=16, probe_steps=8, others_busy=lambda: load["others"])
    serve(tuner, {1: 48.0, 2: 90.0}, 100)
    serve(tuner, {1: 47.0, 2: 0.3}, 20)  # a stall probes at once, whatever the load measured
    assert tuner.current == 1


def test_a_stall_right_after_a_wide_batch_switches_at_once():
    """Served: 16 streams at 80 ms a step, then one stream beside a busy process: two threads take 670 ms a
    step (a whole request at 1.5 tokens/s). A step is compared with steps of its own batch size, so that
    stall is seen on its first step and one thread (47 tokens/s) is tried and kept within a few steps."""
    load = {"others": 0.2}
    tuner = ThreadTuner(2, probe_every=64, probe_steps=8, others_busy=lambda: load["others"])
    serve(tuner, {2: 90.0}, 200, tokens=1)  # one stream, idle: 11 ms a step
    serve(tuner, {2: 200.0}, 300, tokens=16)  # sixteen streams: 80 ms a step
    load["others"] = 1.0
    used = serve(tuner, {1: 47.0, 2: 1.5}, 40, tokens=1)
    assert tuner.current == 1
    assert used[10:].count(2) <= 1


def test_a_lasting_slowdown_of_a_wide_batch_probes_without_waiting_for_the_schedule():
    """Sixteen streams at 80 ms a step; a busy process starts and two threads take 310 ms a step (one takes
    170): a slowdown of 3-4x, lasting, is seen within a few steps, not after the next scheduled probe
    (up to 128 steps: 40 s there)."""
    load = {"others": 0.2}
    tuner = ThreadTuner(2, probe_every=64, probe_steps=8, others_busy=lambda: load["others"])
    serve(tuner, {2: 200.0}, 400, tokens=16)  # 80 ms a step
    load["others"] = 1.0
    busy = {1: 16 / 0.170, 2: 16 / 0.310}
    used = serve(tuner, busy, 40, tokens=16)
    assert tuner.current == 1 and used[20:].count(2) == 0
    assert serve(tuner, busy, 300, tokens=16).count(2) <= 4 * 8  # the new normal: no probe after probe
