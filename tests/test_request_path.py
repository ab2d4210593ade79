"""One request from the API to the engine, in-process: the API, the controller and a worker are ASGI apps in this
process (httpx.ASGITransport), and the worker's engine keeps every GenerationRequest it is handed. So each OpenAI
field is checked where it lands, and a failure names the layer: the request type's translation, the wire, or the
engine."""

from __future__ import annotations

import json

import httpx
import pytest

from parley.engines.base import GenerationRequest, SamplingParams
from parley.engines.echo import EchoEngine
from parley.serving import api, controller, worker
from parley.serving.openai_schemas import ChatCompletionRequest, CompletionRequest

CONTROLLER, WORKER = "http://controller.test", "http://worker.test"
MODEL = "echo-model"


class RecordingEcho(EchoEngine):
    """The echo engine, keeping what it was asked."""

    def __init__(self):
        super().__init__(model_name=MODEL)
        self.requests: list[GenerationRequest] = []

    async def generate_stream(self, request):
        self.requests.append(request)
        async for chunk in super().generate_stream(request):
            yield chunk


class HostRouter(httpx.AsyncBaseTransport):
    """Routes each request to the ASGI app of its host."""

    def __init__(self, apps: dict[str, object]):
        self.transports = {httpx.URL(url).host: httpx.ASGITransport(app=app) for url, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.transports[request.url.host].handle_async_request(request)


@pytest.fixture
async def cluster():
    engine = RecordingEcho()
    controller_app = controller.create_app()
    worker_app = worker.create_app(engine, worker.WorkerSettings(model_names=[MODEL], worker_address=WORKER,
                                                                 controller_address=CONTROLLER,
                                                                 register_with_controller=False))
    inner = httpx.AsyncClient(transport=HostRouter({CONTROLLER: controller_app, WORKER: worker_app}))
    api_app = api.create_app(api.APISettings(controller_address=CONTROLLER), http=inner)
    transports = HostRouter({CONTROLLER: controller_app, WORKER: worker_app, "http://api.test": api_app})
    async with controller_app.router.lifespan_context(controller_app), \
            worker_app.router.lifespan_context(worker_app), api_app.router.lifespan_context(api_app), \
            httpx.AsyncClient(transport=transports, base_url="http://api.test") as client:
        registered = await client.post(CONTROLLER + "/register_worker", json={
            "worker_name": WORKER, "check_heart_beat": False,
            "worker_status": {"model_names": [MODEL], "speed": 1, "queue_length": 0}})
        assert registered.status_code == 200
        yield client, engine
    await inner.aclose()


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}]}

# Each OpenAI field, and where it lands in the engine's request.
FIELDS = [
    ({"temperature": 0.3}, "params.temperature", 0.3),
    ({"temperature": 0.000001}, "params.temperature", 0.0),  # as greedy, decided once
    ({"top_p": 0.5}, "params.top_p", 0.5),
    ({"top_p": 0}, "params.temperature", 0.0),  # top_p 0: only the likeliest token
    ({"top_k": 7}, "params.top_k", 7),
    ({"top_k": -1}, "params.top_k", 0),
    ({"min_p": 0.2}, "params.min_p", 0.2),
    ({"repetition_penalty": 1.3}, "params.repetition_penalty", 1.3),
    ({"max_tokens": 5}, "params.max_new_tokens", 5),
    ({"max_completion_tokens": 6, "max_tokens": 9}, "params.max_new_tokens", 6),
    ({"stop": "END"}, "params.stop", ["END"]),
    ({"stop": ["a", "b", "a", ""]}, "params.stop", ["a", "b"]),
    ({"stop_token_ids": [3, 4]}, "params.stop_token_ids", [3, 4]),
    ({"seed": 11}, "params.seed", 11),
    ({"ignore_eos": True}, "params.ignore_eos", True),
    ({"response_format": {"type": "json_object"}}, "response_format", {"type": "json_object"}),
    ({"messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}]},
     "messages", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]),
]


def field_of(request: GenerationRequest, path: str):
    value = request
    for part in path.split("."):
        value = getattr(value, part)
    if path == "messages":
        return [m.model_dump(exclude_none=True) for m in value]
    return value


@pytest.mark.parametrize("extra, path, expected", FIELDS, ids=[json.dumps(f[0])[:40] for f in FIELDS])
async def test_each_chat_field_reaches_the_engine_as_it_was_meant(cluster, extra, path, expected):
    client, engine = cluster
    response = await client.post("/v1/chat/completions", json=CHAT | extra)
    assert engine.requests, f"the request never reached the engine: {response.status_code} {response.text}"
    assert field_of(engine.requests[-1], path) == expected


async def test_fields_left_out_take_the_one_defaults_table(cluster):
    client, engine = cluster
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    # The template's stops join the request's in the engine's chat layer, not before.
    assert engine.requests[-1].params == SamplingParams()
    assert engine.requests[-1].request_id == response.json()["id"]
    # The translation itself, without the wire: the same table.
    assert ChatCompletionRequest.model_validate(CHAT).to_generation_request("x").params == SamplingParams()
    completion = CompletionRequest.model_validate({"model": MODEL, "prompt": "hi"}).to_generation_requests("x")[0]
    assert completion.params == SamplingParams(max_new_tokens=16)  # OpenAI's default for completions


async def test_n_choices_get_distinct_seeds_and_one_id(cluster):
    client, engine = cluster
    response = await client.post("/v1/chat/completions", json=CHAT | {"n": 3, "seed": 2**63 - 2})
    assert response.status_code == 200, response.text
    assert sorted(r.params.seed for r in engine.requests) == sorted([2**63 - 2, 2**63 - 1, -(2**63)])
    assert {r.request_id for r in engine.requests} == {response.json()["id"]}


async def test_completions_fields_reach_the_engine(cluster):
    client, engine = cluster
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": ["a b", "c d"], "echo": True,
                                                           "max_tokens": 3, "min_p": 0.1, "temperature": 0})
    assert response.status_code == 200, response.text
    assert [r.prompt for r in engine.requests] == ["a b", "c d"]
    assert all(r.echo and r.params.max_new_tokens == 3 and r.params.min_p == 0.1 for r in engine.requests)
    assert [c["text"] for c in response.json()["choices"]] == ["a ba b", "c dc d"]


async def test_tools_reach_the_engine_with_the_choice(cluster):
    client, engine = cluster
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    await client.post("/v1/chat/completions", json=CHAT | {"tools": [tool], "tool_choice": "none"})
    assert engine.requests[-1].tools == [tool] and engine.requests[-1].tool_choice == "none"


@pytest.mark.parametrize("extra, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"min_p": 1.5}, "min_p"),
    ({"top_k": -2}, "top_k"),
    ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tool_choice": "required"}, "tool_choice"),
])
async def test_a_bad_value_is_refused_at_the_api_and_never_reaches_the_engine(cluster, extra, param):
    client, engine = cluster
    response = await client.post("/v1/chat/completions", json=CHAT | extra)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not engine.requests


async def test_the_worker_streams_deltas_not_the_text_so_far(cluster):
    client, engine = cluster
    body = {"prompt": "w " * 300, "params": {"max_new_tokens": 400}}
    response = await client.post(WORKER + "/parley/generate", json=body)
    lines = [json.loads(line) for line in response.text.splitlines()]
    text = "".join(line.get("text", "") for line in lines)
    assert len(lines) > 100 and lines[-1]["finish_reason"] and lines[-1]["usage"]["completion_tokens"] > 100
    # 300 lines of the text so far would be about 100 KB; 300 deltas are about 4.5 KB.
    assert len(response.content) < 10 * len(text), "each line carries its own text, not the reply so far"
    assert not any("token_ids" in line for line in lines)  # only when asked for


async def test_the_native_stream_carries_token_ids_when_asked(cluster):
    client, _ = cluster
    body = {"prompt": "one two three four", "return_token_ids": True, "params": {"max_new_tokens": 3}}
    lines = [json.loads(x) for x in (await client.post(WORKER + "/parley/generate", json=body)).text.splitlines()]
    ids = [t for line in lines for t in line.get("token_ids", [])]
    assert len(ids) == lines[-1]["usage"]["completion_tokens"] == 3


async def test_the_native_stream_refuses_a_bad_request_with_an_error_line(cluster):
    client, _ = cluster
    response = await client.post(WORKER + "/parley/generate", json={"prompt": "x", "params": {"temperature": 9}})
    [line] = [json.loads(x) for x in response.text.splitlines()]
    assert line["error"]["code"] == 40302 and "temperature" in line["error"]["message"]


async def test_the_openapi_document_describes_responses_errors_and_streams(cluster):
    client, _ = cluster
    doc = (await client.get("/openapi.json")).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "429", "502", "503"} <= set(chat)
    assert chat["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "text/event-stream" in chat["200"]["content"]
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    # a request that fails validation is a 400 in OpenAI's shape: FastAPI's 422 is not documented either
    assert not [(p, m) for p, ops in doc["paths"].items() for m, op in ops.items() if "422" in op["responses"]]
    assert (await client.post("/v1/chat/completions", json={"model": "m", "messages": "no"})).status_code == 400
    for path in ("/v1/completions", "/v1/embeddings", "/v1/models"):
        method = "get" if path == "/v1/models" else "post"
        assert doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"] != {}
