"""A cluster on a shared network: with a cluster secret only its own servers talk to the controller and the
workers; without one the FastChat protocol stays open, but what a worker reports is checked."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import run_parley
from tests.servers import Server, models_at, start_api, start_controller, start_worker

SECRET = "s3cret-for-the-test-cluster-0123456789"
MODEL = "authed-echo"


@pytest.fixture(scope="module")
def cluster():
    controller = start_controller(secret=SECRET)
    worker = start_worker(controller, names=MODEL, echo=True)
    api = start_api(controller)
    yield controller, worker, api
    for server in (api, worker, controller):
        server.stop()


@pytest.fixture(scope="module")
def open_cluster():
    controller = start_controller()
    worker = start_worker(controller, names="open-echo", echo=True)
    yield controller, worker
    worker.stop()
    controller.stop()


def test_the_cluster_serves_with_its_secret(cluster):
    controller, worker, api = cluster
    reply = httpx.post(api.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]
    assert MODEL in models_at(controller)


@pytest.mark.parametrize("path, body", [
    ("/register_worker", {"worker_name": "http://10.9.9.9:21002", "check_heart_beat": False,
                          "worker_status": {"model_names": [MODEL], "speed": 1e6, "queue_length": 0}}),
    ("/receive_heart_beat", {"worker_name": "http://10.9.9.9:21002", "queue_length": 0}),
    ("/refresh_all_workers", {}),
    ("/list_models", {}),
    ("/get_worker_address", {"model": MODEL}),
    ("/report_worker_failure", {"worker_name": "http://127.0.0.1:1"}),
])
@pytest.mark.parametrize("authorization", [None, b"Bearer wrong-secret-0123456789", "Bearer ключ".encode(), SECRET.encode()])
def test_the_controller_refuses_requests_without_the_secret(cluster, path, body, authorization):
    controller, _, _ = cluster
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(controller.url + path, json=body, headers=headers, timeout=5)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_cluster_secret"
    assert models_at(controller) == [MODEL]  # the fake registration did not happen


@pytest.mark.parametrize("path, body", [
    ("/worker_generate_stream", {"prompt": "hello", "max_new_tokens": 4}),
    ("/worker_generate", {"prompt": "hello", "max_new_tokens": 4}),
    ("/worker_get_embeddings", {"input": ["hello"]}),
    ("/worker_get_status", {}),
    ("/count_token", {"prompt": "hello"}),
    ("/worker_get_conv_template", {}),
    ("/model_details", {}),
])
def test_every_worker_endpoint_refuses_requests_without_the_secret(cluster, path, body):
    _, worker, _ = cluster
    assert httpx.post(worker.url + path, json=body, timeout=5).status_code == 401
    assert httpx.post(worker.url + path, json=body, timeout=5, headers=worker.headers).status_code == 200
    assert httpx.get(worker.url + "/metrics", timeout=5).status_code == 401
    assert httpx.get(worker.url + "/health", timeout=5).status_code == 200  # for load balancers and supervisors


def test_a_worker_with_the_wrong_secret_is_refused_and_says_why(cluster):
    controller, _, _ = cluster
    stranger = start_worker(controller, names="stranger", echo=True, wait=False, secret="another-secret-0123456789")
    try:
        stranger.wait_until(lambda: "refused this worker" in stranger.log(), "the refusal in its log", timeout=60)
        assert "cluster secret" in stranger.log()
        assert "stranger" not in models_at(controller)
    finally:
        stranger.stop()


def test_the_open_protocol_still_works_without_a_secret(open_cluster):
    controller, worker = open_cluster
    assert httpx.post(controller.url + "/list_models", timeout=5).json()["models"] == ["open-echo"]
    assert httpx.post(worker.url + "/worker_get_status", timeout=5).status_code == 200


@pytest.mark.parametrize("status, what", [
    ({"model_names": ["x"], "speed": 1e12, "queue_length": 0}, "speed"),
    ({"model_names": ["x"], "speed": 0, "queue_length": 0}, "speed"),
    ({"model_names": ["x"], "speed": 1, "queue_length": -1000}, "queue_length"),
    ({"model_names": [], "speed": 1, "queue_length": 0}, "model_names"),
    ({"model_names": [""], "speed": 1, "queue_length": 0}, "model_names"),
    ({"model_names": ["bad\nname"], "speed": 1, "queue_length": 0}, "model_names"),
    ({"model_names": ["x" * 300], "speed": 1, "queue_length": 0}, "model_names"),
])
def test_the_controller_refuses_impossible_worker_reports(open_cluster, status, what):
    controller, _ = open_cluster
    response = httpx.post(controller.url + "/register_worker", timeout=5, json={
        "worker_name": "http://10.9.9.9:21002", "check_heart_beat": False, "worker_status": status})
    assert response.status_code == 400, response.text
    assert what in response.json()["error"]["message"]
    assert models_at(controller) == ["open-echo"]


@pytest.mark.parametrize("name", ["not a url", "ftp://10.0.0.1/", "http://", "javascript:alert(1)"])
def test_the_controller_refuses_a_worker_address_that_is_not_an_http_url(open_cluster, name):
    controller, _ = open_cluster
    response = httpx.post(controller.url + "/register_worker", timeout=5, json={
        "worker_name": name, "worker_status": {"model_names": ["x"]}})
    assert response.status_code == 400
    assert "http(s) URL" in response.json()["error"]["message"]


def test_a_negative_queue_length_in_a_heartbeat_is_refused(open_cluster):
    controller, worker = open_cluster
    response = httpx.post(controller.url + "/receive_heart_beat", timeout=5,
                          json={"worker_name": worker.url, "queue_length": -5})
    assert response.status_code == 400


def test_re_registering_a_live_workers_name_cannot_take_its_models_away(open_cluster):
    controller, worker = open_cluster
    for claimed in (["something-else"], ["open-echo-2"]):
        response = httpx.post(controller.url + "/register_worker", timeout=5, json={
            "worker_name": worker.url, "worker_status": {"model_names": claimed}})
        assert response.status_code == 200
        assert models_at(controller) == ["open-echo"]
    assert "the worker itself serves open-echo" in controller.log()
    # and a request for the model still reaches the real worker
    address = httpx.post(controller.url + "/get_worker_address", json={"model": "open-echo"}, timeout=5).json()
    assert address["address"] == worker.url


def test_servers_warn_when_they_listen_beyond_loopback_without_a_secret():
    controller = Server("controller", "--host", "0.0.0.0")
    try:
        controller.wait_until(lambda: "without a cluster secret" in controller.log(), "the warning", timeout=60)
        assert "register a worker" in controller.log()
    finally:
        controller.stop()


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("short", "shorter than 16"),
    ("has spaces in the secret value", "printable ASCII"),
])
def test_an_unusable_secret_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "secret"
    path.write_text(content)
    result = run_parley("controller", "--cluster-secret-file", str(path), "--port", "1", timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_secret_file_is_a_clear_error(tmp_path):
    result = run_parley("worker", "--engine", "echo", "--cluster-secret-file", str(tmp_path / "nope"), timeout=60)
    assert result.returncode == 2
    assert "cannot read the cluster secret" in result.stderr


def test_a_secret_file_is_read(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    controller = Server("controller", "--cluster-secret-file", str(path), secret=None)
    try:
        controller.wait_until(lambda: httpx.get(controller.url + "/health", timeout=1).status_code == 200, "up")
        assert httpx.post(controller.url + "/list_models", timeout=2).status_code == 401
        assert httpx.post(controller.url + "/list_models", timeout=2,
                          headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
    finally:
        controller.stop()


def test_an_api_with_the_wrong_secret_answers_a_clear_503_and_logs_why(cluster):
    controller, _, _ = cluster
    api = Server("api", "--controller-address", controller.url, secret="not-the-cluster-secret-000")
    try:
        api.wait_until(lambda: httpx.get(api.url + "/health", timeout=2).status_code == 200, "API")
        reply = httpx.post(api.url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
        assert reply.status_code == 503
        assert "cluster secret" in reply.json()["error"]["message"]
        assert "refused this server" in api.log() and "Traceback" not in api.log()
    finally:
        api.stop()


async def test_a_worker_that_refuses_the_gateway_is_a_clean_502(cluster):
    """The API reached the right controller but a worker with another secret: a 502 saying so, not a 500."""
    from parley.engines.base import GenerationRequest
    from parley.serving.cluster_client import ClusterClient
    from parley.serving.cluster_errors import WorkerFailed

    controller, worker, _ = cluster
    async with httpx.AsyncClient(headers=controller.headers) as http:
        cluster_client = ClusterClient(http, controller.url)
        http.headers["Authorization"] = "Bearer another-secret-for-the-worker"  # right for nobody
        with pytest.raises(WorkerFailed) as info:
            async for _ in cluster_client.generate_stream(MODEL, GenerationRequest(prompt="hi"), worker=worker.url):
                pass
    assert info.value.status == 502 and "refused the request (status 401)" in info.value.message
