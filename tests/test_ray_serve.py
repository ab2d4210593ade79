"""parley on a real Ray cluster on 127.0.0.1 (`ray start --head`, started and stopped here), deployed with
`parley ray deploy` as a user deploys it: the bundled model on two llama.cpp replicas, the bundled embedding
model, the API (with keys) and the web UI in the ingress. The openai SDK and Chromium are the clients.

Slow (a cluster and four model replicas on two cores): `make test-slow` runs it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from parley.cli.ray_cmd import fetch_status
from tests.conftest import REPO, import_or_skip, run_parley
from tests.servers import Server, free_port

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
EMBEDDING = "all-minilm-l6-v2"
APP = f"parley-model-{MODEL}"
KEY = "ray-test-key-0123456789"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class RayCluster:
    """A one-node Ray cluster of its own: its own ports and temporary directory, so it meets no other cluster."""

    def __init__(self, tmp: Path):
        import_or_skip("ray", "parley[ray]: the Ray Serve tests")
        self.tmp = tmp
        # Ray's sockets live under its temp dir, whose path must stay short (a Unix socket path's limit).
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
        self.serve_port = free_port()
        self.url = f"http://127.0.0.1:{self.serve_port}"
        self.db_url = f"sqlite:///{tmp / 'parley.db'}"
        self.log_path = tmp / "ray.log"
        for attempt in range(3):  # a port taken between choosing it and Ray binding it: again, with others
            if self._start(attempt):
                return
        raise AssertionError("Ray did not start:\n" + self.log_path.read_text())

    def _start(self, attempt: int) -> bool:
        ports = {"--port": free_port(), "--dashboard-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--node-manager-port": free_port(), "--object-manager-port": free_port(),
                 "--ray-client-server-port": free_port()}
        self.dashboard = f"http://127.0.0.1:{ports['--dashboard-port']}"
        self.gcs = f"127.0.0.1:{ports['--port']}"  # what a driver joins (`parley api --ray-address`)
        low = 20000 + (os.getpid() % 100) * 300 + attempt * 100
        self.log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "4",
             "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(self.ray_tmp),
             "--disable-usage-stats", "--min-worker-port", str(low), "--max-worker-port", str(low + 99),
             *[str(x) for kv in ports.items() for x in kv]],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
            env={**os.environ, "PARLEY_DATA_DIR": str(self.tmp / "data"), "PARLEY_API_KEYS": KEY})
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                self.stop()
                return False
            try:
                if httpx.get(self.dashboard + "/api/serve/applications/", timeout=5).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Ray dashboard never answered:\n" + self.log_path.read_text()
            time.sleep(1)

    def config(self, replicas: int = 2, extra_models: list[dict] | None = None) -> dict:
        return {"http_options": {"host": "127.0.0.1", "port": self.serve_port}, "models": [
            {"worker": {"engine": "llamacpp"}, "num_replicas": replicas, "ray_actor_options": {"num_cpus": 1}},
            {"worker": {"model-path": EMBEDDING, "engine": "sentence-transformers"},
             "ray_actor_options": {"num_cpus": 0.5}},
            *(extra_models or [])],
            "api": {"auth": True, "db-url": self.db_url}, "web": {"db-url": self.db_url}}

    def deploy(self, config: dict, timeout: float = 600) -> subprocess.CompletedProcess:
        path = self.tmp / f"serve-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        return run_parley("ray", "deploy", str(path), "--address", self.dashboard, timeout=timeout)

    def replicas(self, app: str = APP) -> dict[int, str]:
        """The running replicas of a model application: pid -> replica id."""
        found = fetch_status(self.dashboard).applications.get(app)
        if found is None or "model" not in found.deployments:
            return {}
        return {r.pid: r.replica_id for r in found.deployments["model"].replicas if r.state == "RUNNING"}

    def pid_serving(self, request_id: str) -> int | None:
        """The replica process whose log names the request (each replica logs the requests it takes)."""
        for path in (self.ray_tmp / "session_latest" / "logs").glob("worker-*.err"):
            if request_id in path.read_text(errors="replace"):
                return int(re.search(r"-(\d+)\.err$", path.name).group(1))
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left of its session
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory):
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        result = cluster.deploy(cluster.config())
        assert result.returncode == 0, result.stdout + result.stderr
        assert "deployed: every application is running" in result.stdout
        yield cluster
    finally:
        cluster.stop()


def client(stack: RayCluster, key: str = KEY):
    openai = import_or_skip("openai", "the openai SDK")
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=120)


def streamed(stack: RayCluster, max_tokens: int = 24) -> tuple[str, str]:
    """A streamed greedy answer to QUESTION: its id and its text."""
    chunks = list(client(stack).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                                        max_tokens=max_tokens, stream=True))
    return chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_two_replicas_chat_stream_and_embed_through_the_api_with_its_keys(ray_stack):
    import openai

    sdk = client(ray_stack)
    assert sorted(m.id for m in sdk.models.list()) == [EMBEDDING, MODEL]
    with pytest.raises(openai.AuthenticationError):  # the API's keys hold under Serve as they do elsewhere
        client(ray_stack, key="wrong-key").models.list()

    plain = sdk.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in plain.choices[0].message.content  # the bundled model, greedy
    assert plain.usage.prompt_tokens > 10 and plain.usage.completion_tokens > 0

    with ThreadPoolExecutor(6) as pool:  # six at once: Serve's router spreads them over both replicas
        answers = list(pool.map(lambda _: streamed(ray_stack), range(6)))
    assert all("Paris" in text for _, text in answers), answers
    replicas = ray_stack.replicas()
    assert len(replicas) == 2
    served = {ray_stack.pid_serving(request_id) for request_id, _ in answers}
    assert served == set(replicas), f"replicas {sorted(replicas)} served {served}"

    vectors = [e.embedding for e in sdk.embeddings.create(
        model=EMBEDDING, input=["The cat sat on the mat.", "A cat is sitting on a rug.", "Stock prices fell."]).data]
    assert len(vectors) == 3 and len(vectors[0]) == 384

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2  # a real embedding model's sense

    status = run_parley("ray", "status", "--address", ray_stack.dashboard)
    assert status.returncode == 0 and f"application {APP} (no route): RUNNING" in status.stdout, status.stdout
    assert "  model: HEALTHY, 2 running (target 2)" in status.stdout, status.stdout


def test_a_separate_api_process_joins_the_cluster_and_serves_its_models_through_their_handles(ray_stack):
    import openai

    api = Server("api", "--ray-address", ray_stack.gcs, "--auth", "--db-url", ray_stack.db_url,
                 env={"PARLEY_API_KEYS": KEY, "PARLEY_DATA_DIR": str(ray_stack.tmp / "data")})
    try:
        api.wait_until(lambda: MODEL in httpx.get(api.url + "/health", timeout=2).json()["models"],
                       "the API joining the Ray cluster", timeout=180)
        sdk = openai.OpenAI(base_url=api.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        reply = sdk.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
        assert "Paris" in reply.choices[0].message.content
        text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True) if c.choices)
        assert "Paris" in text
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=4)
    finally:
        assert api.stop() == 0, api.log()  # Ctrl-C: a clean exit, leaving the cluster as it was
    assert len(ray_stack.replicas()) == 2


def test_a_replica_killed_mid_stream_ends_that_reply_with_an_error_and_serve_replaces_it(ray_stack):
    import openai

    before = ray_stack.replicas()
    assert len(before) == 2
    stream = client(ray_stack).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=2000, stream=True,
        extra_body={"ignore_eos": True})
    received, killed_at, error = 0, None, None
    try:
        for chunk in stream:
            received += 1
            if received == 10:
                victim = ray_stack.pid_serving(chunk.id)
                assert victim in before
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
    except openai.APIError as exc:
        error = exc
    assert killed_at is not None and error is not None, f"the stream ended without an error after {received} chunks"
    assert time.monotonic() - killed_at < 10
    assert "stopped while answering; please retry" in str(error)

    # Meanwhile, and until the replacement runs, requests keep succeeding (on the other replica, then on both).
    failures, answered = [], 0
    deadline = time.monotonic() + 240
    while True:
        try:
            reply = client(ray_stack).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                                              max_tokens=8)
            answered += bool(reply.choices[0].message.content)
        except openai.APIError as exc:
            failures.append(repr(exc))
        now = ray_stack.replicas()
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement replica: {now}"
    assert failures == [] and answered >= 1
    assert streamed(ray_stack)[1]  # and the cluster answers as before


def test_the_web_ui_chats_through_the_ray_deployment(ray_stack):
    import_or_skip("playwright", "browser tests")
    from playwright.sync_api import sync_playwright

    from tests.browser import BROWSER_ARGS, CHROMIUM, stored_messages
    from tests.test_web_app import open_app, pick, send, wait_done

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = open_app(browser, ray_stack.url)
            pick(page, MODEL)
            send(page, "What is the capital of France?")
            answer = wait_done(page, 1)
            assert "Paris" in answer
            assert page.errors == []
        finally:
            browser.close()
    stored = [(m.role, m.content) for m in stored_messages(ray_stack.db_url)]
    assert ("user", "What is the capital of France?") in stored and ("assistant", answer) in stored


def test_a_redeploy_with_fewer_replicas_and_a_new_model_fails_no_request(ray_stack):
    import openai

    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load(streaming: bool) -> None:
        sdk = client(ray_stack)
        while not stop.is_set():
            try:
                if streaming:
                    text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
                        model=MODEL, messages=QUESTION, max_tokens=16, stream=True) if c.choices)
                else:
                    text = sdk.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16).choices[0].message.content
                answered[0] += bool(text)
            except openai.APIError as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=load, args=(s,)) for s in (False, True)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        echo = {"worker": {"engine": "echo", "model-names": "echo-model"}, "ray_actor_options": {"num_cpus": 0.25}}
        result = ray_stack.deploy(ray_stack.config(replicas=1, extra_models=[echo]))
        assert result.returncode == 0, result.stdout + result.stderr
        before = answered[0]
        deadline = time.monotonic() + 60
        while answered[0] < before + 4:  # and a few more answers from the updated application
            assert time.monotonic() < deadline and not failures, failures
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == [], failures
    assert len(ray_stack.replicas()) == 1
    sdk = client(ray_stack)
    assert "echo-model" in {m.id for m in sdk.models.list()}
    reply = sdk.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "ping pong"}])
    # the echo engine repeats its prompt up to the template's first stop: the default template's system message
    assert reply.choices[0].message.content.startswith("A chat between a curious human and an artificial")


def test_a_model_that_cannot_load_fails_the_deploy_with_the_reason(ray_stack, tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    config = ray_stack.config(replicas=1, extra_models=[{"worker": {"model-path": str(missing)},
                                                         "ray_actor_options": {"num_cpus": 0.25}}])
    result = ray_stack.deploy(config, timeout=300)
    assert result.returncode == 2
    assert "DEPLOY_FAILED" in result.stderr and "does not exist" in result.stderr, result.stderr
    assert client(ray_stack).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # still serving
