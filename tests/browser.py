"""What the browser tests share: Debian's Chromium driven by Playwright (no browser download), and `parley serve`
on 127.0.0.1 with the bundled model plus an echo worker, so that a battle has two models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parley.store.database import Database
from parley.store.models import Message
from tests.servers import REPO, Server, free_port, models_at, start_worker

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "screens"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"  # `parley serve` serves it beside the chat model, for knowledge


CLUSTER_SECRET = "web-ui-test-cluster-secret-0123"


class Stack:
    """`parley serve` with the bundled chat model (and, with `embeddings`, the bundled embedding model that knowledge
    needs: it doubles the start-up, so only the tests of knowledge ask for it), plus an echo worker."""

    def __init__(self, tmp: Path, embeddings: bool = False):
        self.db_url = f"sqlite:///{tmp / 'parley.db'}"
        self.data_home = tmp / "data"  # the leaderboard file and anything else of the user's data home
        self.web_port, self.controller_port = free_port(), free_port()
        self.log = tmp / "serve.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "parley", "serve", "--port", str(free_port()),
                 "--controller-port", str(self.controller_port), "--worker-port", str(free_port()),
                 "--web-port", str(self.web_port), "--db-url", self.db_url,
                 *([] if embeddings else ["--embedding-model", "none"])], cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "PARLEY_DATA_DIR": str(self.data_home), "PARLEY_CLUSTER_SECRET": CLUSTER_SECRET})
        deadline = time.monotonic() + 300
        while "Press Ctrl-C to stop" not in self.log.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.5)
        self.url = f"http://127.0.0.1:{self.web_port}/"
        self.controller = Server.__new__(Server)  # serve's own: a worker more joins it with the secret given
        self.controller.url = f"http://127.0.0.1:{self.controller_port}"
        self.controller.secret = CLUSTER_SECRET
        self.controller.headers = {"Authorization": f"Bearer {CLUSTER_SECRET}"}
        self.echo = start_worker(self.controller, names="echo-model", echo=True, delay_s=0.01)
        assert set(models_at(self.controller)) == {MODEL, "echo-model"} | ({EMBEDDING_MODEL} if embeddings else set())

    def stop(self) -> None:
        self.echo.stop()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield b
        b.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def wait_until(condition, message, timeout: float = 30) -> None:
    """Poll `condition`; `message` (or a function giving it, called on failure) says what did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.05)


def stored_messages(db_url: str) -> list[Message]:
    db = Database(db_url)
    with db.session() as s:
        rows = s.query(Message).order_by(Message.conversation_id, Message.position, Message.id).all()
    db.close()
    return rows
