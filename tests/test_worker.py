"""The worker's FastChat endpoints, in-process: stream framing, errors, templates, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import pytest

from parley.conversation.templates import NAMED_TEMPLATES
from parley.engines.echo import EchoEngine
from parley.engines.openai_proxy import UpstreamError
from parley.serving.cluster_client import _embedding_answer
from parley.serving.cluster_errors import RequestRejected, WorkerFailed
from parley.serving.fastchat_conv import (
    FASTCHAT_SEP_STYLE,
    fastchat_conversation,
    named_template_from_fastchat,
)
from parley.serving.protocol import ErrorCode
from parley.serving.worker import WorkerSettings, create_app
from tests.conftest import import_or_skip


def frames(body: bytes) -> list[dict]:
    assert body.endswith(b"\0"), "every chunk ends with a NUL byte"
    return [json.loads(part) for part in body.split(b"\0")[:-1]]


def client_for(engine, **settings) -> httpx.AsyncClient:
    app = create_app(engine, WorkerSettings(model_names=["m"], worker_address="http://w",
                                            register_with_controller=False, **settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w")


async def test_stream_is_nul_delimited_cumulative_text_with_usage_at_the_end():
    async with client_for(EchoEngine()) as w:
        r = await w.post("/worker_generate_stream", json={"prompt": "one two three four", "max_new_tokens": 3})
    chunks = frames(r.content)
    texts = [c["text"] for c in chunks]
    assert texts == ["one ", "one two ", "one two three "]
    assert all(c["error_code"] == 0 for c in chunks)
    assert chunks[-1]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert "finish_reason" not in chunks[0]


async def test_echo_stop_and_stream_interval():
    async with client_for(EchoEngine(), stream_interval=2) as w:
        r = await w.post("/worker_generate_stream", json={
            "prompt": "a b c d e f", "max_new_tokens": 10, "echo": True, "stop": "e"})
        chunks = frames(r.content)
        # a chunk every 2 engine steps, then the final one; the stop string "e" is never shown
        assert [c["text"] for c in chunks] == ["a b c d e fa b ", "a b c d e fa b c d ", "a b c d e fa b c d "]
        assert chunks[-1]["finish_reason"] == "stop"
        whole = (await w.post("/worker_generate", json={"prompt": "a b c", "max_new_tokens": 2})).json()
        assert whole["text"] == "a b " and whole["error_code"] == 0 and whole["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body, code", [
    ({"prompt": "x", "presence_penalty": 0.5}, ErrorCode.PARAM_OUT_OF_RANGE),
    ({"prompt": "x", "logprobs": 2}, ErrorCode.PARAM_OUT_OF_RANGE),
    ({"prompt": "x", "top_p": 1.5}, ErrorCode.PARAM_OUT_OF_RANGE),
    ({"prompt": "x", "max_new_tokens": "many"}, ErrorCode.VALIDATION_TYPE_ERROR),
    ({"prompt": ""}, ErrorCode.VALIDATION_TYPE_ERROR),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, ErrorCode.VALIDATION_TYPE_ERROR),
    ({"prompt": "word " * 5000}, ErrorCode.CONTEXT_OVERFLOW),
])
async def test_errors_come_back_as_one_chunk_with_fastchat_codes(body, code):
    async with client_for(EchoEngine()) as w:
        r = await w.post("/worker_generate_stream", json=body)
    [chunk] = frames(r.content)
    assert chunk["error_code"] == code and chunk["text"]


REFUSING_TEMPLATE = ("{% for m in messages %}{% if 'forbidden' in m['content'] %}"
                     "{{ raise_exception('this template refuses the word forbidden') }}{% endif %}"
                     "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")


async def test_a_chat_template_that_refuses_one_requests_messages_fails_that_request_alone():
    async with client_for(EchoEngine(chat_template=REFUSING_TEMPLATE, delay_s=0.01)) as w:
        good, bad = await asyncio.gather(
            w.post("/worker_generate_stream", json={"messages": [{"role": "user", "content": "hello there"}]}),
            w.post("/worker_generate_stream", json={"messages": [{"role": "user", "content": "a forbidden word"}]}))
    [error] = frames(bad.content)
    assert error == {"text": "the chat template refused these messages: this template refuses the word forbidden",
                     "error_code": ErrorCode.VALIDATION_TYPE_ERROR}
    last = frames(good.content)[-1]
    assert last["error_code"] == 0 and last["text"] == "user: hello there\nassistant: "


class TokenizerFailsOnMarker(EchoEngine):
    async def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        if "\ufffe" in text:
            raise ValueError("the tokenizer cannot read U+FFFE")
        return await super().count_tokens(text, add_special_tokens)


async def test_a_text_the_tokenizer_fails_on_gets_an_error_reply_from_count_token():
    async with client_for(TokenizerFailsOnMarker()) as w:
        bad, good = await asyncio.gather(w.post("/count_token", json={"prompt": "a \ufffe b"}),
                                         w.post("/count_token", json={"prompt": "a b"}))
    answer = bad.json()
    assert answer["count"] == 0 and answer["error_code"] == ErrorCode.INTERNAL_ERROR
    assert answer["text"].startswith("the token count failed in the worker (request wrk-")
    assert "ValueError" not in answer["text"]  # the cause goes to the worker's log, not to clients
    assert good.json() == {"count": 2, "error_code": 0}


async def test_a_body_that_is_not_json_is_a_validation_error():
    async with client_for(EchoEngine()) as w:
        r = await w.post("/worker_generate_stream", content=b"{not json", headers={"content-type": "application/json"})
    assert frames(r.content)[0]["error_code"] == ErrorCode.VALIDATION_TYPE_ERROR


async def test_overload_is_refused_with_42903_and_the_queue_length_is_reported():
    async with client_for(EchoEngine(delay_s=0.05), limit_worker_concurrency=1, max_queue_length=1) as w:
        async def one():
            return frames((await w.post("/worker_generate_stream", json={"prompt": "a b c d e f g h"})).content)

        async def status_while_busy():
            await asyncio.sleep(0.1)
            return (await w.post("/worker_get_status")).json()

        *results, status = await asyncio.gather(one(), one(), one(), status_while_busy())
    codes = sorted(r[-1]["error_code"] for r in results)
    assert codes == [0, 0, ErrorCode.ENGINE_OVERLOADED]  # one generating, one waiting, one refused
    assert status == {"model_names": ["m"], "speed": 1.0, "queue_length": 2}


async def test_embeddings_count_token_and_model_details():
    async with client_for(EchoEngine(context_length=100)) as w:
        emb = (await w.post("/worker_get_embeddings", json={"model": "m", "input": ["a b", "c"]})).json()
        assert len(emb["embedding"]) == 2 and emb["token_num"] == 3
        assert (await w.post("/count_token", json={"prompt": "a b c"})).json() == {"count": 3, "error_code": 0}
        details = (await w.post("/model_details")).json()
        assert details["context_length"] == 100 and details["parley"]["messages"] is True


@pytest.mark.parametrize("name", sorted(NAMED_TEMPLATES))
def test_conv_template_is_what_fastchat_would_send(name):
    fastchat = import_or_skip("fastchat.conversation", "the templates are compared with FastChat's")
    template = NAMED_TEMPLATES[name]
    ours = json.loads(json.dumps(fastchat_conversation(template)))
    try:
        theirs = json.loads(json.dumps(dataclasses.asdict(fastchat.get_conv_template(name)), default=int))
    except KeyError:
        pytest.skip(f"fschat 0.2.36 has no template {name}")
    assert ours == theirs
    if template.style in FASTCHAT_SEP_STYLE:
        assert named_template_from_fastchat(theirs) == template  # and back, to render for a FastChat worker


async def test_worker_endpoint_for_conv_template_follows_the_model_name():
    engine = EchoEngine(model_name="vicuna-7b-v1.5")
    async with client_for(engine) as w:
        conv = (await w.post("/worker_get_conv_template")).json()["conv"]
    assert conv["name"] == "vicuna_v1.1" and conv["sep_style"] == 2


async def test_real_model_answers_messages_with_its_own_template(engine):
    """The bundled model behind the worker: `messages` are rendered by the worker (parley's extension)."""
    async with client_for(engine) as w:
        r = await w.post("/worker_generate_stream", json={
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_new_tokens": 24})
        chunks = frames(r.content)
        assert "Paris" in chunks[-1]["text"] and chunks[-1]["finish_reason"] == "stop"
        metrics = (await w.get("/metrics")).text
    assert 'parley_time_to_first_token_seconds_count{endpoint="/worker_generate_stream",server="worker"} 1.0' in metrics
    assert 'parley_generation_tokens_total{model="m",server="worker"}' in metrics
    assert "parley_running_batch_size" in metrics and "parley_queue_length" in metrics


class EmbeddingFails(EchoEngine):
    """An engine whose embeddings fail in a given way (this is a test of the error path, not of inference)."""

    def __init__(self, failure):
        super().__init__()
        self.failure = failure

    async def embed(self, texts):
        result = await super().embed(texts)
        if self.failure == "nan":
            result.embeddings[0][0] = float("nan")
            return result
        raise self.failure


@pytest.mark.parametrize("failure, code, status", [
    ("nan", ErrorCode.INTERNAL_ERROR, 500),
    (RuntimeError("CUDA error: device-side assert triggered"), ErrorCode.INTERNAL_ERROR, 500),
    (UpstreamError(429, "upstream (429): Rate limit reached for text-embedding-3-small"), ErrorCode.ENGINE_OVERLOADED, 429),
    (UpstreamError(503, "upstream (503): <html>Bad gateway at 10.0.0.7</html>"), ErrorCode.INTERNAL_ERROR, 500),
])
async def test_every_embedding_failure_is_a_json_error_without_internals(failure, code, status):
    async with client_for(EmbeddingFails(failure)) as w:
        response = await w.post("/worker_get_embeddings", json={"input": ["a", "b"], "request_id": "embd-7"})
    answer = response.json()  # JSON, whatever failed
    assert answer["error_code"] == code
    for internal in ("CUDA", "10.0.0.7", "nan", "Rate limit reached"):
        assert internal not in answer["text"]
    assert "embd-7" in answer["text"]
    assert RequestRejected.from_worker(answer["error_code"], answer["text"]).status == status  # as the API answers


def test_the_api_turns_an_unreadable_worker_answer_into_a_clean_502():
    for answer in (httpx.Response(500, text="Internal Server Error"), httpx.Response(200, json={"detail": "x"}),
                   httpx.Response(200, json={"embedding": [[0.1]], "token_num": 1})):  # one vector for two texts
        with pytest.raises(WorkerFailed) as info:
            _embedding_answer("m", "http://w", answer, count=2)
        assert info.value.status == 502 and info.value.code == "worker_failed"
