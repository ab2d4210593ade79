"""Secrets stay where they belong: keys come from files or the environment, and $OPENAI_API_KEY is sent only
to the hosts it is meant for (api.openai.com and those in $PARLEY_OPENAI_KEY_HOSTS)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import run_parley
from tests.servers import Server, models_at, start_api, start_controller, start_worker

KEY = "sk-upstream-team-key-4411"


@pytest.fixture(scope="module")
def upstream():
    """A parley API that needs KEY, in front of an echo worker: the upstream of the proxy workers below."""
    controller = start_controller()
    worker = start_worker(controller, names="echo", echo=True)
    api = start_api(controller, env={"PARLEY_API_KEYS": KEY})
    yield controller, api
    for server in (api, worker, controller):
        server.stop()


def proxy_worker(controller: Server, api: Server, name: str, *extra: str, env: dict) -> Server:
    server = Server("worker", "--engine", "openai", "--upstream-base-url", api.url + "/v1", "--upstream-model", "echo",
                    "--model-names", name, "--controller-address", controller.url, "--heart-beat-interval", "1",
                    *extra, env=env)
    return server.wait_until(lambda: name in models_at(controller), f"registration of {name}", timeout=120)


def ask(api: Server, model: str) -> httpx.Response:
    return httpx.post(api.url + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})


def test_openai_api_key_from_the_environment_is_not_sent_to_other_hosts(upstream):
    controller, api = upstream
    worker = proxy_worker(controller, api, "proxied-default", env={"OPENAI_API_KEY": KEY})
    try:
        reply = ask(api, "proxied-default")
        assert reply.status_code == 500  # the upstream refused: the key did not go to 127.0.0.1
        assert KEY not in reply.text and "upstream (401)" not in reply.text
        assert "upstream (401)" in worker.log()  # the cause, in the worker's log
    finally:
        worker.stop()


def test_openai_api_key_goes_to_the_hosts_named_for_it(upstream):
    controller, api = upstream
    worker = proxy_worker(controller, api, "proxied-named",
                          env={"OPENAI_API_KEY": KEY, "PARLEY_OPENAI_KEY_HOSTS": "gpu-box.internal, 127.0.0.1"})
    try:
        reply = ask(api, "proxied-named")
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"]
    finally:
        worker.stop()


def test_an_upstream_key_file_is_read(upstream, tmp_path):
    controller, api = upstream
    (tmp_path / "key").write_text(KEY + "\n")
    worker = proxy_worker(controller, api, "proxied-file", "--upstream-api-key-file", str(tmp_path / "key"), env={})
    try:
        assert ask(api, "proxied-file").status_code == 200
    finally:
        worker.stop()


def test_a_database_url_with_a_password_on_the_command_line_is_warned_about(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_parley("db", "upgrade", "--db-url", url)
    assert result.returncode == 0 and "ps" not in result.stderr
    result = run_parley("db", "upgrade", env={"PARLEY_DB_URL": url})  # from the environment
    assert result.returncode == 0 and str(tmp_path / "x.db") in result.stdout
    (tmp_path / "url").write_text(url)
    result = run_parley("db", "upgrade", "--db-url-file", str(tmp_path / "url"))
    assert result.returncode == 0 and str(tmp_path / "x.db") in result.stdout
    result = run_parley("db", "upgrade", "--db-url", "postgresql://u:hunter2@127.0.0.1:1/x")
    assert "`ps` shows" in result.stderr and "hunter2" not in result.stderr


def test_a_missing_or_empty_api_keys_file_is_a_clear_error(tmp_path):
    result = run_parley("api", "--api-keys-file", str(tmp_path / "nope"), "--port", "1")
    assert result.returncode == 2 and "cannot read the API keys" in result.stderr
    (tmp_path / "empty").write_text("\n")
    result = run_parley("api", "--api-keys-file", str(tmp_path / "empty"), "--port", "1")
    assert result.returncode == 2 and "is empty" in result.stderr
