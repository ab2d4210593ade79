"""The whole stack as separate processes on 127.0.0.1: controller, workers, API; driven by the
official `openai` SDK and LangChain, with the real bundled model for everything that generates."""

from __future__ import annotations

import base64
import struct
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import import_or_skip
from tests.servers import models_at, start_api, start_controller, start_worker

KEY = "sk-parley-test"
REAL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def stack():
    controller = start_controller("--heart-beat-expiration", "3")
    servers = [controller]
    try:
        # transformers: what this module asserts of seeds (n choices repeat) holds there whatever shares the
        # batch; llama.cpp (the default for the bundled GGUF) repeats a seed for a request alone
        servers.append(start_worker(controller, "--engine", "transformers", names=REAL))
        servers.append(start_worker(controller, names="echo", echo=True))
        api = start_api(controller, "--api-keys", f"other-key,{KEY}")
        servers.append(api)
        yield {"controller": controller, "api": api, "real": servers[1], "echo": servers[2]}
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["api"].url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_are_listed(client):
    assert {m.id for m in client.models.list()} == {REAL, "echo"}
    assert client.models.retrieve("echo").id == "echo"


def test_chat_plain_and_streamed_with_usage(client):
    whole = client.chat.completions.create(model=REAL, messages=QUESTION, temperature=0, max_tokens=24)
    answer = whole.choices[0].message.content
    assert "Paris" in answer and whole.choices[0].finish_reason == "stop"
    assert whole.usage.prompt_tokens > 10 and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    events = list(client.chat.completions.create(model=REAL, messages=QUESTION, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    assert events[0].choices[0].delta.role == "assistant"
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == answer  # greedy: the stream says exactly what the whole reply said
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "stop"
    assert events[-1].choices == [] and events[-1].usage == whole.usage
    assert all(e.usage is None for e in events[:-1])


def test_chat_accepts_text_parts_system_and_max_completion_tokens(client):
    r = client.chat.completions.create(model=REAL, max_completion_tokens=5, temperature=0, messages=[
        {"role": "system", "content": "You are a geography teacher."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": " of Italy?"}]},
    ])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_n_choices_with_a_seed_are_reproducible(client):
    kwargs = dict(model=REAL, messages=[{"role": "user", "content": "Write a word."}], n=2, seed=7,
                  temperature=1.0, max_tokens=12)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    prompt_only = client.chat.completions.create(**(kwargs | {"n": 1}))
    assert first.usage.prompt_tokens == prompt_only.usage.prompt_tokens  # the prompt counts once


def test_completions_with_list_prompt_echo_and_n(client):
    r = client.completions.create(model=REAL, prompt=["The capital of France is", "1, 2, 3,"], max_tokens=6,
                                  temperature=0, echo=True, n=2)
    assert len(r.choices) == 4
    assert r.choices[0].text.startswith("The capital of France is") and r.choices[2].text.startswith("1, 2, 3,")
    assert r.choices[0].text == r.choices[1].text  # greedy
    assert " 4" in r.choices[2].text
    assert r.usage.completion_tokens == 4 * 6
    streamed = client.completions.create(model=REAL, prompt="1, 2, 3,", max_tokens=6, temperature=0, stream=True)
    assert "1, 2, 3," + "".join(e.choices[0].text for e in streamed) == r.choices[2].text


def test_embeddings_float_and_base64(client):
    floats = client.embeddings.create(model=REAL, input=["The cat sat on the mat.", "A dog barked."])
    assert [d.index for d in floats.data] == [0, 1] and floats.usage.prompt_tokens > 5
    vector = floats.data[0].embedding
    assert len(vector) == 576 and abs(sum(x * x for x in vector) - 1) < 1e-3
    raw = httpx.post(client.base_url.join("embeddings").__str__(), headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": REAL, "input": "The cat sat on the mat.", "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{len(vector)}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert max(abs(a - b) for a, b in zip(decoded, vector)) < 1e-5


def test_langchain_chat_openai_invoke_and_stream(stack):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=REAL, base_url=stack["api"].url + "/v1", api_key=KEY, temperature=0, max_tokens=24,
                     max_retries=0)
    assert "Paris" in llm.invoke("What is the capital of France?").content
    assert "Paris" in "".join(chunk.content for chunk in llm.stream("What is the capital of France?"))


def test_langchain_forced_tool_call_on_an_ordinary_tool_gives_a_call(stack):
    """`bind_tools(..., tool_choice=NAME)` on a tool whose schema says nothing of extra keys (as LangChain writes
    them): the arguments are closed to the declared keys, as OpenAI's and vLLM's are, so the small model cannot
    keep adding keys until its tokens run out and the call parses."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    assert "additionalProperties" not in get_weather.args_schema.model_json_schema()
    llm = ChatOpenAI(model=REAL, base_url=stack["api"].url + "/v1", api_key=KEY, temperature=0, max_tokens=48,
                     max_retries=0).bind_tools([get_weather], tool_choice="get_weather")
    message = llm.invoke("What is the weather in Paris?")
    assert message.invalid_tool_calls == []
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and set(call["args"]) == {"city"}
    streamed = None
    for chunk in llm.stream("What is the weather in Paris?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls == [call | {"id": streamed.tool_calls[0]["id"]}]  # the same arguments, streamed


def test_requests_are_routed_by_model_name(client):
    echo = client.completions.create(model="echo", prompt="alpha beta gamma", max_tokens=2)
    assert echo.choices[0].text == "alpha beta "  # only the echo engine answers like this
    real = client.completions.create(model=REAL, prompt="alpha beta gamma", max_tokens=2, temperature=0)
    assert real.choices[0].text != "alpha beta "


@pytest.mark.parametrize("call, status, fragment", [
    (lambda c: c.chat.completions.create(model=REAL, messages=QUESTION, temperature=5), 400, "temperature"),
    (lambda c: c.chat.completions.create(model=REAL, messages=QUESTION, extra_body={"colour": "blue"}), 400,
     "Unrecognized request argument supplied: colour"),
    (lambda c: c.chat.completions.create(model=REAL, messages=[{"role": "assistant", "content": "hi"}]), 400,
     "alternate"),
    (lambda c: c.chat.completions.create(model="echo", messages=QUESTION, presence_penalty=1.0), 400, "presence_penalty"),
    (lambda c: c.chat.completions.create(model="echo", messages=QUESTION, logprobs=True), 400, "logprobs"),
    (lambda c: c.chat.completions.create(model="echo", messages=QUESTION, response_format={"type": "json_object"}), 400,
     "structured output"),
    (lambda c: c.chat.completions.create(model=REAL, messages=QUESTION, top_logprobs=2), 400, "top_logprobs"),
    (lambda c: c.chat.completions.create(model=REAL, messages=QUESTION, tool_choice="required"), 400, "tool_choice"),
    (lambda c: c.chat.completions.create(model=REAL, messages=QUESTION, tools=[{"type": "function"}]), 400, "tools[0]"),
    (lambda c: c.chat.completions.create(model="no-such-model", messages=QUESTION), 404, "does not exist"),
    (lambda c: c.chat.completions.create(model=REAL, messages=[{"role": "user", "content": "word " * 9000}]), 400,
     "context window"),
    (lambda c: c.completions.create(model=REAL, prompt=[1, 2, 10**6]), 400, "vocabulary"),  # token ids are taken; bad ones refused
    (lambda c: c.embeddings.create(model=REAL, input=""), 400, "empty"),
])
def test_errors_have_openai_bodies_and_statuses(client, call, status, fragment):
    with pytest.raises(openai.APIStatusError) as info:
        call(client)
    assert info.value.status_code == status
    body = info.value.body
    assert set(body) >= {"message", "type", "code", "param"} and fragment in body["message"]


def test_context_overflow_is_coded_like_openai(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=REAL, messages=[{"role": "user", "content": "word " * 9000}], stream=True)
    assert info.value.code == "context_length_exceeded"


def test_api_keys_are_required(stack):
    url = stack["api"].url + "/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url, headers={"Authorization": "Bearer other-key"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack["api"].url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(stack["api"].url + "/health").status_code == 200  # health and metrics need no key


def test_overload_is_429(stack, client):
    busy = start_worker(stack["controller"], "--limit-worker-concurrency", "1", "--max-queue-length", "0",
                        names="busy", echo=True, delay_s=0.1)
    try:
        results: list = []

        def call():
            try:
                results.append(client.completions.create(model="busy", prompt="a b c d e f", max_tokens=6))
            except openai.APIStatusError as exc:
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(refused) == 2 and "overloaded" in refused[0].message
        assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    finally:
        busy.stop()


def test_two_workers_share_a_model_and_the_survivor_serves_when_one_is_killed(stack, client):
    controller = stack["controller"]
    pair = [start_worker(controller, names="pair", echo=True) for _ in range(2)]
    try:
        for _ in range(12):
            assert client.completions.create(model="pair", prompt="x y", max_tokens=1).choices[0].text == "x "

        def served(worker) -> float:
            metrics = httpx.get(worker.url + "/metrics").text
            line = next(line for line in metrics.splitlines()
                        if line.startswith('parley_requests_total{endpoint="/parley/generate"'))
            return float(line.rsplit(" ", 1)[1])

        counts = [served(w) for w in pair]
        assert sum(counts) == 12 and min(counts) >= 3, counts  # the load is spread
        pair[0].kill()
        for _ in range(6):  # no error: the dead worker is reported, dropped, and the other one answers
            assert client.completions.create(model="pair", prompt="x y", max_tokens=1).choices[0].text == "x "
        assert served(pair[1]) == counts[1] + 6
        assert "pair" in models_at(controller)
    finally:
        for w in pair:
            w.stop()


def test_a_worker_killed_mid_reply_ends_the_stream_with_an_error_not_a_hang(stack, client):
    doomed = start_worker(stack["controller"], names="doomed", echo=True, delay_s=0.2)
    stream = client.completions.create(model="doomed", prompt="word " * 200, max_tokens=200, stream=True)
    received = [next(iter(stream))]
    doomed.kill()
    started = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        for event in stream:
            received.append(event)
    assert time.monotonic() - started < 5
    assert "stopped while answering" in str(info.value.message)
    assert len(received) < 50
    # The model is gone now: a new request says so with 503 (known model, no worker), not 404.
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="doomed", prompt="x", max_tokens=1)
    assert info.value.status_code == 503


def test_metrics_on_every_server(stack, client):
    client.chat.completions.create(model=REAL, messages=QUESTION, max_tokens=4, stream=True).close()
    client.chat.completions.create(model=REAL, messages=QUESTION, max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    api = httpx.get(stack["api"].url + "/metrics").text
    assert 'parley_requests_total{endpoint="/v1/chat/completions",server="api",status="200"}' in api
    assert 'parley_time_to_first_token_seconds_bucket{endpoint="/v1/chat/completions"' in api
    assert 'parley_request_errors_total{code="404",endpoint="/v1/chat/completions",server="api"}' in api
    assert f'parley_prompt_tokens_total{{model="{REAL}",server="api"}}' in api
    controller = httpx.get(stack["controller"].url + "/metrics").text
    assert 'parley_workers{server="controller"}' in controller and 'endpoint="/get_worker_address"' in controller
    worker = httpx.get(stack["real"].url + "/metrics").text
    assert 'parley_running_batch_size{server="worker"}' in worker and "parley_generation_tokens_total" in worker


def test_workers_re_register_after_a_controller_restart_and_silent_ones_expire():
    controller = start_controller("--heart-beat-expiration", "3")
    port = controller.port
    worker = start_worker(controller, names="phoenix", echo=True)
    try:
        assert worker.log().count("registered with the controller") == 1
        controller.kill()
        worker.wait_until(lambda: "unreachable" in worker.log(), "the worker noticing the controller is gone", 20)
        from tests.servers import Server

        controller = Server("controller", "--heart-beat-expiration", "3", port=port)
        controller.wait_until(lambda: models_at(controller) == ["phoenix"], "re-registration", timeout=20)
        assert worker.log().count("registered with the controller") == 2  # it registered again, on its own
        worker.kill()
        started = time.monotonic()
        controller.wait_until(lambda: models_at(controller) == [], "expiry of the silent worker", timeout=20)
        assert time.monotonic() - started < 8
        assert "no heartbeat" in controller.log()
    finally:
        worker.stop()
        controller.stop()


def test_test_message_prints_a_streamed_reply_and_explains_failures(stack):
    from tests.conftest import run_parley

    controller = stack["controller"].url
    ok = run_parley("test-message", "--model-name", REAL, "--controller-address", controller,
                    "--message", "What is the capital of France?", timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"{REAL}: " in ok.stdout and "Paris" in ok.stdout
    direct = run_parley("test-message", "--model-name", "echo", "--worker-address", stack["echo"].url,
                        "--message", "ping pong", timeout=120)
    # the echo engine repeats its prompt: the one_shot template's system message, until the "###" stop
    assert direct.returncode == 0 and "echo: A chat between a curious human" in direct.stdout
    missing = run_parley("test-message", "--model-name", "nope", "--controller-address", controller, timeout=120)
    assert missing.returncode == 2 and "no worker serves 'nope'" in missing.stderr and REAL in missing.stderr
    gone = run_parley("test-message", "--model-name", "x", "--worker-address", "http://127.0.0.1:9", timeout=120)
    assert gone.returncode == 2 and "cannot reach the worker at http://127.0.0.1:9" in gone.stderr
    assert "Traceback" not in missing.stderr + gone.stderr


def test_fastchat_api_server_uses_our_controller_and_workers(stack, tmp_path):
    """FastChat's own OpenAI API server (fschat 0.2.36) in front of parley's controller and worker:
    it reads our conversation template, checks the context length, and generates through our worker."""
    import importlib.util

    # (not imported here: importing it writes a log file into the working directory)
    if importlib.util.find_spec("fastchat") is None or importlib.util.find_spec("shortuuid") is None:
        from tests.conftest import REQUIRE_TEST_EXTRAS

        message = "needs fschat with aiohttp and shortuuid (make test installs them)"
        pytest.fail(message) if REQUIRE_TEST_EXTRAS else pytest.skip(message)
    import os
    import subprocess
    import sys

    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastchat.serve.openai_api_server", "--host", "127.0.0.1",
                             "--port", str(port), "--controller-address", stack["controller"].url],
                            cwd=tmp_path, env={**os.environ, "LOGDIR": str(tmp_path)},  # FastChat writes logs to cwd
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        fastchat = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                models = {m.id for m in fastchat.models.list()}
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
                time.sleep(0.3)
        assert REAL in models
        reply = fastchat.chat.completions.create(model=REAL, messages=QUESTION, temperature=0, max_tokens=24)
        assert "Paris" in reply.choices[0].message.content
        assert reply.usage.completion_tokens > 0  # from our worker's usage
        # (FastChat 0.2.36's own streaming fails under pydantic 2 — `chunk.json(ensure_ascii=...)` —
        # whatever the backend, so streaming is not checked through it.)
        completion = fastchat.completions.create(model=REAL, prompt="1, 2, 3,", max_tokens=6, temperature=0)
        assert " 4" in completion.choices[0].text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_fastchat_worker_joins_our_controller_and_is_served_through_our_api(stack, client, tmp_path):
    """FastChat's own worker app and inference loop (fschat 0.2.36) on the bundled model: it
    registers with parley's controller, and parley's API renders prompts for it from its template."""
    import_or_skip("fastchat.serve.base_model_worker", "needs fschat")
    import os
    import subprocess
    import sys

    from tests.servers import REPO, free_port, wait_for

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fastchat_worker.py"), stack["controller"].url,
                             str(port), "fastchat-smol", "qwen-7b-chat"], cwd=tmp_path,
                            # heartbeats every second: the test controller forgets workers after 3 s
                            env={**os.environ, "LOGDIR": str(tmp_path), "PYTHONPATH": str(REPO),
                                 "FASTCHAT_WORKER_HEART_BEAT_INTERVAL": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        worker_log = tmp_path / "model_worker_test.log"
        log = lambda: worker_log.read_text() if worker_log.exists() else ""  # noqa: E731
        wait_for(lambda: "fastchat-smol" in models_at(stack["controller"]), proc, "FastChat worker registration",
                 log=log)
        # FastChat's worker registers before its HTTP server listens: wait until it answers too
        wait_for(lambda: httpx.post(f"http://127.0.0.1:{port}/worker_get_status", timeout=5).status_code == 200,
                 proc, "FastChat worker listening", log=log)
        reply = client.chat.completions.create(model="fastchat-smol", messages=QUESTION, temperature=0, max_tokens=24)
        assert "Paris" in reply.choices[0].message.content
        streamed = client.chat.completions.create(model="fastchat-smol", messages=QUESTION, temperature=0,
                                                  max_tokens=24, stream=True)
        assert "".join(e.choices[0].delta.content or "" for e in streamed if e.choices) == reply.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_parley_bench_measures_a_server(stack, tmp_path):
    from tests.conftest import run_parley

    out = tmp_path / "bench.json"
    result = run_parley("bench", "--base-url", stack["api"].url + "/v1", "--api-key", KEY, "--model", REAL,
                        "--concurrency", "1,2", "--max-tokens", "4", "--num-requests", "2", "--ignore-eos",
                        "--api", "chat,responses", "--output", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stdout and "TTFT p50 ms" in result.stdout and "vs chat plain" in result.stdout
    import json

    levels = json.loads(out.read_text())
    assert [(lv["api"], lv["concurrency"]) for lv in levels] == [("chat", 1), ("responses", 1), ("chat", 2),
                                                                  ("responses", 2)]
    assert all(lv["requests"] == 2 and lv["failed"] == 0 and lv["output_tokens"] == 8 for lv in levels)
    assert all(lv["tokens_per_s"] > 0 and lv["ttft_ms"]["p50"] > 0 for lv in levels)
    wrong = run_parley("bench", "--base-url", stack["api"].url + "/v1", "--model", REAL, "--num-requests", "1",
                       "--concurrency", "1", timeout=120)  # no key: every request fails
    assert wrong.returncode == 2 and "every chat plain request failed" in wrong.stderr
