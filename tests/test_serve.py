"""`parley serve`: the embedded default stack comes up, answers through the SDK, and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from parley.store.accounts import Accounts
from parley.store.api_keys import ApiKeys, KeySpec
from parley.store.database import Database
from tests.postgres import PostgresServer, postgres_bin
from tests.servers import REPO, free_port


def start_serve(log, *args: str, env: dict | None = None) -> subprocess.Popen:
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "parley", "serve", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    for _ in range(600):
        if "Press Ctrl-C to stop" in log.read_text() or proc.poll() is not None:
            break
        subprocess.run(["sleep", "0.5"])
    assert proc.poll() is None, log.read_text()
    return proc


def stop_serve(proc: subprocess.Popen, log) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    text = log.read_text()
    assert "Traceback" not in text
    for server in ("API stopped", "worker stopped", "controller stopped", "stopped"):
        assert server in text


def test_serve_answers_through_the_sdk_stops_on_sigterm_and_restarts_at_once(tmp_path):
    api_port, controller_port, worker_port, web_port = free_port(), free_port(), free_port(), free_port()
    ports = ["--port", str(api_port), "--controller-port", str(controller_port), "--worker-port", str(worker_port),
             "--web-port", str(web_port), "--db-url", f"sqlite:///{tmp_path / 'parley.db'}"]
    log = tmp_path / "serve.log"
    proc = start_serve(log, *ports)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="none", max_retries=0)
    assert f"http://127.0.0.1:{api_port}/v1" in log.read_text()
    model = "smollm2-135m-instruct"  # and the bundled embedding model, for knowledge
    assert {m.id for m in client.models.list()} == {model, "all-minilm-l6-v2"}
    reply = client.chat.completions.create(model=model, temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content
    assert f"web UI       http://127.0.0.1:{web_port}" in log.read_text()
    page = httpx.get(f"http://127.0.0.1:{web_port}/", timeout=30, follow_redirects=True)  # / leads to /app/
    assert page.status_code == 200 and "<title>parley</title>" in page.text and str(page.url).endswith("/app/")
    stop_serve(proc, log)
    assert "web UI stopped" in log.read_text()

    # The same ports at once (their connections are still in TIME_WAIT), with the llama.cpp engine.
    log = tmp_path / "serve-again.log"
    proc = start_serve(log, *ports, "--engine", "llamacpp", "--embedding-model", "none")
    reply = client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    stop_serve(proc, log)


def test_serve_refuses_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "parley", "serve", "--port", str(port)], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"port {port} (api) is in use" in result.stderr


def test_serve_restarts_a_worker_killed_with_sigkill_while_the_rest_keeps_serving(tmp_path):
    """The worker dies (SIGKILL): the API and web UI stay up, requests in the window get a clean 503, the
    supervisor restarts the worker, and the next request after that succeeds."""
    import os
    import time

    import psutil

    api_port, controller_port, worker_port, web_port = free_port(), free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    proc = start_serve(log, "--port", str(api_port), "--controller-port", str(controller_port), "--worker-port",
                       str(worker_port), "--web-port", str(web_port), "--db-url", f"sqlite:///{tmp_path / 'p.db'}",
                       "--embedding-model", "none")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="none", max_retries=0, timeout=60)
    ask = dict(model="smollm2-135m-instruct", temperature=0, max_tokens=8,
               messages=[{"role": "user", "content": "What is the capital of France?"}])
    try:
        assert client.chat.completions.create(**ask).choices[0].message.content
        [worker] = [c for c in psutil.Process(proc.pid).children() if "worker" in c.cmdline()]
        pid = worker.pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        statuses = []
        while True:
            assert time.monotonic() - killed < 120, f"the worker was not back within 120 s:\n{log.read_text()}"
            assert httpx.get(f"http://127.0.0.1:{web_port}/health", timeout=5).json()["status"] == "ok"
            try:
                reply = client.chat.completions.create(**ask)
                break
            except openai.APIStatusError as exc:
                statuses.append(exc.status_code)
                assert exc.status_code == 503, exc
                assert exc.body["code"] in ("model_unavailable", "service_unavailable"), exc.body
            time.sleep(0.2)
        back = time.monotonic() - killed
        assert reply.choices[0].message.content
        assert statuses, "no request fell into the restart window"
        text = log.read_text()
        assert f"worker smollm2-135m-instruct (pid {pid}) killed by SIGKILL" in text
        assert "restarting it in" in text and "is serving again" in text
        assert "stopping everything" not in text
        print(f"worker back {back:.1f} s after SIGKILL; {len(statuses)} requests got 503 meanwhile")
    finally:
        stop_serve(proc, log)


def children_of(pid: int) -> list[int]:
    """Every process below `pid`."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_serve_passes_secrets_to_its_children_in_their_environment_never_on_the_command_line(tmp_path):
    """Also `parley serve --auth` for a team: the API takes users' keys from the database beside the static ones,
    and the web UI gets the sign-up policy and the OpenID Connect settings (its client secret by file)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries are absent (Debian package postgresql)")
    database = PostgresServer()
    key, password, oidc_secret = "sk-team-key-71d3f0", "pg-password-5e1c9a", "oidc-secret-c0ffee"
    try:
        url = database.create_database("serve_secrets").replace("parley@", f"parley:{password}@")
        (tmp_path / "keys").write_text(f"{key}\nsk-second-key-aa10\n")
        (tmp_path / "db-url").write_text(url)
        (tmp_path / "oidc-secret").write_text(oidc_secret)
        api_port, controller_port, web_port = free_port(), free_port(), free_port()
        log = tmp_path / "serve.log"
        proc = start_serve(log, "--engine", "llamacpp", "--port", str(api_port), "--controller-port",
                           str(controller_port), "--worker-port", str(free_port()), "--web-port", str(web_port),
                           "--api-keys-file", str(tmp_path / "keys"), "--db-url-file", str(tmp_path / "db-url"),
                           "--embedding-model", "none", "--auth", "--signup", "approval",
                           "--oidc-issuer", "http://127.0.0.1:9/realms/team", "--oidc-client-id", "parley",
                           "--oidc-client-secret-file", str(tmp_path / "oidc-secret"), "--oidc-name", "Keycloak")
        try:
            children = children_of(proc.pid)
            assert len(children) >= 4  # controller, worker, API, web UI
            for pid in [proc.pid, *children]:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
                assert key not in argv and password not in argv and "sk-second" not in argv, argv
                assert oidc_secret not in argv
            environ = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in children}
            secrets = {e.split(b"PARLEY_CLUSTER_SECRET=")[1].split(b"\0")[0] for e in environ.values()
                       if b"PARLEY_CLUSTER_SECRET=" in e}
            assert len(secrets) == 1 and len(secrets.pop()) >= 32  # one secret, made for this run, shared by all
            for pid in children:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
                assert "CLUSTER_SECRET" not in argv
            # the keys reached the API, the URL the web UI, the secret the controller
            api = f"http://127.0.0.1:{api_port}/v1"
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=api, api_key="wrong", max_retries=0).models.list()
            assert openai.OpenAI(base_url=api, api_key=key, max_retries=0).models.list().data
            db = Database(url)
            users_key = ApiKeys(db).create(Accounts(db).create("ana", "a long password"), KeySpec(name="laptop")).secret
            db.close()
            assert openai.OpenAI(base_url=api, api_key=users_key, max_retries=0).models.list().data
            session = httpx.get(f"http://127.0.0.1:{web_port}/api/session", timeout=10).json()
            assert session["signed_in"] is False and session["signup"] == "approval"
            assert session["oidc"]["name"] == "Keycloak"
            assert httpx.get(f"http://127.0.0.1:{web_port}/health", timeout=10).status_code == 200
            assert f"127.0.0.1:{database.port}/serve_secrets" in log.read_text()
            assert password not in log.read_text() and oidc_secret not in log.read_text()
            assert httpx.post(f"http://127.0.0.1:{controller_port}/list_models", timeout=10).status_code == 401
        finally:
            stop_serve(proc, log)
    finally:
        database.stop()
