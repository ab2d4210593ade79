"""The controller: FastChat's endpoints, heartbeats and expiry, and both dispatch methods."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from parley.serving.controller import ControllerSettings, create_app
from parley.serving.protocol import WorkerStatus
from parley.serving.worker_registry import DispatchMethod, WorkerRegistry
from tests.conftest import REPO


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_silent_workers_expire_and_heartbeats_keep_them():
    clock = FakeClock()
    reg = WorkerRegistry(DispatchMethod.SHORTEST_QUEUE, expiration_s=90, clock=clock)
    reg.register("http://a", WorkerStatus(model_names=["m"]))
    reg.register("http://b", WorkerStatus(model_names=["m"]))
    reg.register("http://fixed", WorkerStatus(model_names=["m"]), check_heart_beat=False)
    clock.now += 60
    assert reg.heartbeat("http://a", queue_length=3)
    clock.now += 60  # b has now been silent for 120 s, a for 60 s
    assert reg.expire() == ["http://b"]
    assert set(reg.workers) == {"http://a", "http://fixed"}
    assert not reg.heartbeat("http://b", 0)  # unknown: it must register again


def test_shortest_queue_spreads_load_and_counts_what_it_sent():
    reg = WorkerRegistry(DispatchMethod.SHORTEST_QUEUE, 90, rng=random.Random(0))
    reg.register("http://a", WorkerStatus(model_names=["m"], queue_length=0))
    reg.register("http://b", WorkerStatus(model_names=["m"], queue_length=2))
    picks = Counter(reg.pick("m") for _ in range(6))
    assert picks == {"http://a": 4, "http://b": 2}  # a takes work until the queues are level
    assert reg.pick("other") is None


def test_lottery_weights_by_speed():
    reg = WorkerRegistry(DispatchMethod.LOTTERY, 90, rng=random.Random(1))
    reg.register("http://fast", WorkerStatus(model_names=["m"], speed=3))
    reg.register("http://slow", WorkerStatus(model_names=["m"], speed=1))
    picks = Counter(reg.pick("m") for _ in range(4000))
    assert 2.6 < picks["http://fast"] / picks["http://slow"] < 3.4


@pytest.fixture
async def controller():
    app = create_app(ControllerSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://controller") as client:
        yield client


async def test_fastchat_endpoints(controller):
    for name, models, queue in [("http://w1:21002", ["vicuna", "chat"], 0), ("http://w2:21002", ["chat"], 5)]:
        r = await controller.post("/register_worker", json={
            "worker_name": name, "check_heart_beat": True,
            "worker_status": {"model_names": models, "speed": 1, "queue_length": queue}})
        assert r.status_code == 200 and r.json()["registered"]
    assert (await controller.post("/list_models")).json() == {"models": ["chat", "vicuna"]}
    assert (await controller.post("/get_worker_address", json={"model": "chat"})).json() == {"address": "http://w1:21002"}
    assert (await controller.post("/get_worker_address", json={"model": "nope"})).json() == {"address": ""}
    assert (await controller.post("/receive_heart_beat", json={"worker_name": "http://w1:21002", "queue_length": 9})).json() == {"exist": True}
    assert (await controller.post("/receive_heart_beat", json={"worker_name": "http://ghost", "queue_length": 0})).json() == {"exist": False}
    status = (await controller.post("/worker_get_status")).json()
    assert status == {"model_names": ["chat", "vicuna"], "speed": 2.0, "queue_length": 14}
    assert (await controller.get("/test_connection")).text == "success"
    assert (await controller.get("/health")).json()["workers"] == 2


async def test_register_without_status_asks_the_worker_and_refuses_when_it_cannot(controller):
    r = await controller.post("/register_worker", json={"worker_name": "http://127.0.0.1:9", "check_heart_beat": True})
    assert r.json() == {"registered": False}
    assert (await controller.post("/list_models")).json() == {"models": []}


async def test_bad_requests_are_400_saying_what_is_wrong(controller):
    r = await controller.post("/register_worker", json={"check_heart_beat": True})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "worker_name"
    assert (await controller.post("/get_worker_address", json={})).status_code == 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_controller_command_serves_and_stops_cleanly_on_ctrl_c():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "parley", "controller", "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/test_connection", timeout=1).text == "success"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "controller did not come up"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    log = proc.stdout.read()
    assert "controller up" in log and "controller stopped" in log and "Traceback" not in log
