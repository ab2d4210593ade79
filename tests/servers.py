"""Real parley servers on 127.0.0.1 for tests: started as a user would, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 120,
             log: Callable[[], str] = lambda: "") -> None:
    """Poll `ready` (HTTP errors count as not yet) until it holds; fail, with the log, if `proc` exits first or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}) first:\n{log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s:\n{log()}")
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen, timeout: float = 30) -> int:
    """Stop a process as Ctrl-C does (SIGINT), killing it if it has not exited within `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Server:
    """A `parley ...` subprocess whose output goes to a file (read it with `.log()`)."""

    def __init__(self, *args: str, port: int | None = None, env: dict | None = None, secret: str | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secret  # the cluster secret it was given ($PARLEY_CLUSTER_SECRET)
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        env = {**(env or {}), **({"PARLEY_CLUSTER_SECRET": secret} if secret else {})}
        self.args = [*args, "--port", str(self.port)]
        self._log = tempfile.NamedTemporaryFile("w+", prefix="parley-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "parley", *self.args], cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})

    def log(self) -> str:
        return Path(self._log.name).read_text()

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120) -> Server:
        wait_for(ready, self.proc, f"{' '.join(self.args)}: {what}", timeout, self.log)
        return self

    def kill(self) -> None:
        """As if the machine died: no clean shutdown, no goodbye to the controller."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        return interrupt(self.proc, timeout)


def start_controller(*extra: str, port: int | None = None, secret: str | None = None) -> Server:
    server = Server("controller", *extra, port=port, secret=secret)
    return server.wait_until(lambda: httpx.get(server.url + "/health", timeout=1).json()["status"] == "ok",
                             "controller")


def models_at(controller: Server) -> list[str]:
    return httpx.post(controller.url + "/list_models", timeout=2, headers=controller.headers).json()["models"]


def start_worker(controller: Server, *extra: str, names: str, echo: bool = False, delay_s: float = 0.0,
                 wait: bool = True, secret: str | None = None) -> Server:
    """A worker of `controller`, with the controller's cluster secret unless another is given."""
    args = ["worker", "--model-names", names, "--controller-address", controller.url, "--heart-beat-interval", "1", *extra]
    if echo:
        args += ["--engine", "echo"]
    server = Server(*args, env={"PARLEY_ECHO_DELAY_S": str(delay_s)}, secret=secret or controller.secret)
    if wait:
        name = names.split(",")[0]
        server.wait_until(lambda: name in models_at(controller)
                          and httpx.get(server.url + "/health", timeout=1).json()["registered"],
                          f"registration of {name}", timeout=180)
    return server


def start_api(controller: Server, *extra: str, env: dict | None = None) -> Server:
    """An API of `controller`; its assistants come from the database that `--db-url` names, else from a fresh
    data home's default database (never the user's own)."""
    env = {"PARLEY_DATA_DIR": tempfile.mkdtemp(prefix="parley-data-"), **(env or {})}
    server = Server("api", "--controller-address", controller.url, *extra, env=env, secret=controller.secret)
    return server.wait_until(lambda: httpx.get(server.url + "/health", timeout=1).status_code == 200, "API")
