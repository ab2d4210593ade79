"""One request cannot stall or flood the servers: every bound is an OpenAI-format 400 (413 for a body) decided
before any model work, and a small request beside a hostile one is served as if it were alone."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

from tests.servers import start_api, start_controller, start_worker

KEY = "sk-bounds-test"
ECHO = "echo"
REAL = "smollm2"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack():
    controller = start_controller()
    worker = start_worker(controller, names=ECHO, echo=True, delay_s=0.02)
    api = start_api(controller, "--stream-send-timeout", "2", env={"PARLEY_API_KEYS": KEY})
    yield {"controller": controller, "worker": worker, "api": api}
    for server in (api, worker, controller):
        server.stop()


@pytest.fixture
def api(stack) -> httpx.Client:
    with httpx.Client(base_url=stack["api"].url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None, says: str = "") -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    if param is not None:
        assert error["param"] == param, error
    assert says in error["message"], error
    return error


def chat(**fields) -> dict:
    return {"model": ECHO, "messages": HELLO, "max_tokens": 4} | fields


def completion(**fields) -> dict:
    return {"model": ECHO, "prompt": "hello", "max_tokens": 4} | fields


BOUNDS = [
    # (what, endpoint, body, param, words in the message)
    ("seed beyond 64 bits", "/v1/chat/completions", chat(seed=2**64), "seed", "less than or equal to"),
    ("seed below 64 bits", "/v1/completions", completion(seed=-(2**70)), "seed", "greater than or equal to"),
    ("too many messages", "/v1/chat/completions", chat(messages=HELLO * 2049), "messages", "at most 2048"),
    ("too many stops", "/v1/chat/completions", chat(stop=[f"s{i}" for i in range(17)]), "stop", "at most 16"),
    ("a stop too long", "/v1/completions", completion(stop=["a" * 257]), "stop.0", "at most 256"),
    ("50 stops of 5 KB", "/v1/completions", completion(stop=["a" * 5000] * 50), "stop", "at most 16"),
    ("n beyond 128", "/v1/chat/completions", chat(n=129), "n", "less than or equal to 128"),
    ("n × prompts beyond 128", "/v1/completions", completion(n=128, prompt=["hi"] * 200), "prompt", "at most 128"),
    ("n × prompts beyond 128 (each within)", "/v1/completions", completion(n=2, prompt=["hi"] * 65), "n",
     "n × the number of prompts is 130"),
    ("too many prompts", "/v1/completions", completion(prompt=["hi"] * 129), "prompt", "at most 128"),
    ("top_logprobs beyond 20", "/v1/chat/completions", chat(logprobs=True, top_logprobs=21), "top_logprobs",
     "less than or equal to 20"),
    ("completions logprobs beyond 5", "/v1/completions", completion(logprobs=6), "logprobs", "less than or equal to 5"),
    ("max_tokens beyond the context window", "/v1/chat/completions", chat(max_tokens=10**12), "max_tokens",
     "context window of 4096 tokens"),
    ("max_tokens beyond the context window", "/v1/completions", completion(max_tokens=4097), "max_tokens",
     "context window of 4096"),
    ("too many tools", "/v1/chat/completions",
     chat(tools=[{"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}
                 for i in range(129)]), "tools", "at most 128"),
    ("too many embedding inputs", "/v1/embeddings", {"model": ECHO, "input": ["x"] * 2049}, "input", "at most 2048"),
    ("100,000 embedding inputs", "/v1/embeddings", {"model": ECHO, "input": ["x"] * 100_000}, "input", "at most 2048"),
    ("an embedding input too long", "/v1/embeddings", {"model": ECHO, "input": "x" * 65537}, "input", "at most 65536"),
    ("too many stop token ids", "/v1/completions", completion(stop_token_ids=list(range(65))), "stop_token_ids",
     "at most 64"),
]


@pytest.mark.parametrize("what, endpoint, body, param, says", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound_is_a_400_naming_the_field(api, stack, what, endpoint, body, param, says):
    assert_openai_error(api.post(endpoint, json=body), 400, param, says)


def test_the_largest_allowed_values_are_served(api):
    reply = api.post("/v1/chat/completions", json=chat(seed=2**63 - 1, n=2, stop=["x" * 256] * 16, top_logprobs=None))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["choices"]) == 2  # the second choice's seed wrapped around within 64 bits
    reply = api.post("/v1/completions", json=completion(n=2, prompt=["hi"] * 64, max_tokens=1))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["choices"]) == 128


def test_a_body_beyond_the_limit_is_a_413_before_it_is_parsed(api):
    big = json.dumps(chat(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}]))
    error = assert_openai_error(api.post("/v1/chat/completions", content=big,
                                         headers={"content-type": "application/json"}), 413)
    assert error["code"] == "request_too_large" and "at most 4194304" in error["message"]

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    assert_openai_error(api.post("/v1/chat/completions", content=chunks(),
                                 headers={"content-type": "application/json"}), 413)
    assert api.post("/v1/chat/completions", json=chat()).status_code == 200  # and the server serves on


def test_a_worker_refuses_a_20_mb_body_at_once(stack):
    body = json.dumps({"messages": [{"role": "user", "content": "x" * (20 * 1024 * 1024)}]})
    response = httpx.post(stack["worker"].url + "/worker_generate_stream", content=body, timeout=60)
    assert response.status_code == 413  # refused on its size, not tokenized first
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("token", ["Bearer ключ", "Bearer a\tb", "Bearer " + "é" * 10, "Basic abc", "Bearer"])
def test_a_malformed_or_non_ascii_api_key_is_a_401_and_the_connection_serves_on(stack, token):
    with httpx.Client(base_url=stack["api"].url, timeout=30) as client:
        for _ in range(2):  # the same keep-alive connection, twice
            response = client.post("/v1/chat/completions", json=chat(),
                                   headers={"Authorization": token.encode("utf-8")})
            assert_openai_error(response, 401)
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert client.post("/v1/chat/completions", json=chat(),
                           headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def stalled_stream(url: str, body: dict) -> socket.socket:
    """A client that sends a streaming request and then reads nothing, with a tiny receive buffer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_stops_reading_is_disconnected_and_its_generation_stopped(stack):
    worker = stack["worker"]
    # 16 choices of 4,000 tokens of up to 400 characters at 50 tokens a second: about 13 MB over 80 s, if it were
    # read, so the socket buffers (a few MB on loopback) fill long before the reply ends, and a reply that ended on
    # its own would take longer than the 60 s given below.
    prompt = " ".join(f"{i:04d}" + "w" * 396 for i in range(2000))
    sock = stalled_stream(stack["api"].url, completion(prompt=prompt, n=16, max_tokens=4000, stream=True))
    try:
        def in_flight() -> int:
            return httpx.get(worker.url + "/health", timeout=5).json()["queue_length"]

        deadline = time.monotonic() + 20
        while in_flight() < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert in_flight() == 16
        deadline = time.monotonic() + 60  # the buffers fill, then 2 s of silence (--stream-send-timeout 2)
        while in_flight() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert in_flight() == 0, "the generations of a client that reads nothing went on"
        assert "read nothing for 2 s" in stack["api"].log()
    finally:
        sock.close()


def test_a_small_request_is_served_while_a_flood_of_choices_is_refused(api, stack):
    """The request that froze the API (n=128 × 200 prompts) is refused at once; a small one beside it is served."""
    hostile = completion(n=128, prompt=[f"prompt {i}" for i in range(200)], max_tokens=16)
    results: dict[str, float] = {}

    def send_hostile():
        started = time.perf_counter()
        response = httpx.post(stack["api"].url + "/v1/completions", json=hostile, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"})
        results["hostile_status"] = response.status_code
        results["hostile_s"] = time.perf_counter() - started

    thread = threading.Thread(target=send_hostile)
    thread.start()
    reply = api.post("/v1/chat/completions", json=chat())
    thread.join(60)
    assert reply.status_code == 200
    assert results["hostile_status"] == 400
    health = httpx.get(stack["api"].url + "/health", timeout=5)
    assert health.json()["status"] == "ok"


# ---- with the real model: long inputs are tokenized and rendered off the worker's event loop ----------------


@pytest.fixture(scope="module")
def real_worker():
    controller = start_controller()
    worker = start_worker(controller, names=REAL)
    yield worker
    worker.stop()
    controller.stop()


async def test_a_small_request_is_not_held_up_by_a_huge_prompt_being_tokenized(real_worker):
    """A 3.5 MB message (under the body limit, far over the context window) takes seconds to tokenize; a
    small request sent just after it finishes first, because tokenizing and rendering happen off the loop."""
    huge = {"messages": [{"role": "user", "content": "All work and no play makes Jack a dull boy. " * 80_000}],
            "max_new_tokens": 4, "temperature": 0}
    small = {"messages": [{"role": "user", "content": "Say hi."}], "max_new_tokens": 4, "temperature": 0}
    finished: list[str] = []
    async with httpx.AsyncClient(base_url=real_worker.url, timeout=300) as client:
        async def send(name: str, body: dict) -> dict:
            response = await client.post("/worker_generate", json=body)
            finished.append(name)
            return response.json()

        hostile = asyncio.create_task(send("huge", huge))
        await asyncio.sleep(0.3)  # the huge one is being rendered and tokenized now
        small_reply = await send("small", small)
        huge_reply = await hostile
    assert small_reply["error_code"] == 0 and small_reply["text"]
    assert huge_reply["error_code"] != 0 and "context window" in huge_reply["text"]
    assert finished == ["small", "huge"]


@pytest.mark.parametrize("field, value", [("max_tokens", True), ("max_tokens", "5"), ("max_tokens", 5.0),
                                          ("temperature", "0.5"), ("stream", "true"), ("n", "2"), ("seed", 1.5)])
def test_a_value_of_the_wrong_json_type_is_a_400_as_openai_answers(api, field, value):
    """Strict, as OpenAI is: `max_tokens: true` is refused, not read as 1."""
    assert_openai_error(api.post("/v1/chat/completions", json=chat(**{field: value})), 400, field)
    assert api.post("/v1/chat/completions", json=chat(temperature=1, max_tokens=2)).status_code == 200  # int for float
