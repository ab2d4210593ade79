"""OpenAI's Responses API and reasoning output, through the official openai SDK and LiteLLM's client against real
servers on 127.0.0.1: a controller, the bundled model on llama.cpp (answers, streams, structured output, a function
call round trip continued by `previous_response_id`), the bundled model again under a reasoning model's chat
template (its real output, which the template starts inside `<think>`, comes back as reasoning), an echo worker
that echoes a `<think>…</think>` block (the split between reasoning and answer, to the character), and
`parley api --auth` on SQLite with two users' keys (a stored response is found only with its owner's keys)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from parley.store.accounts import Accounts
from parley.store.api_keys import ApiKeys, KeySpec
from parley.store.database import Database
from tests.servers import start_api, start_controller, start_worker

CHAT = "smollm2-135m-instruct"  # the bundled model
THINKER = "smollm2-thinking"  # the bundled model under a reasoning model's template
ECHO = "echo-thinking"  # echoes the user's message, read by the reasoning parser
PROXIED = "proxied-thinking"  # the openai engine in front of THINKER
TEMPLATE = Path(__file__).parent / "data" / "think_chat_template.jinja"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('responses') / 'parley.db'}"
    db = Database(url)
    db.upgrade()
    controller = start_controller()
    workers = [start_worker(controller, names=CHAT),
               start_worker(controller, "--chat-template", str(TEMPLATE), names=THINKER),
               start_worker(controller, "--conv-template", "raw", "--reasoning-parser", "think", names=ECHO, echo=True)]
    api = start_api(controller, "--auth", "--db-url", url)
    # The openai engine in front of this API's reasoning model: its reasoning_content comes through as parley's.
    upstream_key = tmp_path_factory.mktemp("upstream") / "key"
    upstream_key.write_text(new_key(db))
    workers.append(start_worker(controller, "--engine", "openai", "--upstream-base-url", api.url + "/v1",
                                "--upstream-model", THINKER, "--upstream-api-key-file", str(upstream_key),
                                names=PROXIED))
    yield db, api
    api.stop()
    for w in workers:
        w.stop()
    controller.stop()
    db.close()


def new_key(db: Database) -> str:
    user = Accounts(db).create(f"u{uuid.uuid4().hex[:10]}", None)
    return ApiKeys(db).create(user, KeySpec(name="test")).secret


@pytest.fixture(scope="module")
def key(site) -> str:
    return new_key(site[0])


@pytest.fixture(scope="module")
def client(site, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=site[1].url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_a_plain_response_has_a_message_and_usage(client):
    r = client.responses.create(model=CHAT, input="What is the capital of France?", max_output_tokens=24,
                                temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == CHAT
    assert r.status in ("completed", "incomplete")
    [message] = r.output
    assert message.type == "message" and message.role == "assistant"
    assert r.output_text.strip() and r.output_text == message.content[0].text
    assert 0 < r.usage.output_tokens <= 24 and r.usage.input_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # The same answer as the chat completion of the same conversation (greedy).
    chat = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "What is the capital of "
                                                                "France?"}], max_tokens=24, temperature=0)
    assert r.output_text == chat.choices[0].message.content


def test_max_output_tokens_makes_an_incomplete_response(client):
    r = client.responses.create(model=CHAT, input="Write a long story about a dragon.", max_output_tokens=5,
                                temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5


def test_instructions_and_message_items_reach_the_model(client):
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
             {"role": "user", "content": "Now say goodbye."}]
    r = client.responses.create(model=CHAT, instructions="You are terse.", input=items, max_output_tokens=16,
                                temperature=0)
    chat = client.chat.completions.create(model=CHAT, max_tokens=16, temperature=0, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Now say goodbye."}])
    assert r.output_text == chat.choices[0].message.content
    assert r.instructions == "You are terse."


def test_streamed_events_come_in_openais_order(client):
    with client.responses.stream(model=CHAT, input="Name three colors.", max_output_tokens=20, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == final.output_text
    assert final.usage.output_tokens > 0
    # The stream's answer is the plain request's.
    plain = client.responses.create(model=CHAT, input="Name three colors.", max_output_tokens=20, temperature=0)
    assert plain.output_text == final.output_text


def test_json_schema_output(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    r = client.responses.create(model=CHAT, input="Where is the Eiffel Tower? Answer as JSON.", temperature=0,
                                max_output_tokens=60, text={"format": {"type": "json_schema", "name": "place",
                                                                       "schema": schema, "strict": True}})
    data = json.loads(r.output_text)
    assert set(data) == {"city", "country"}
    assert r.text.format.type == "json_schema"


def test_a_function_call_round_trip_with_previous_response_id(client):
    first = client.responses.create(model=CHAT, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
                                    max_output_tokens=40)
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    assert isinstance(json.loads(call.arguments)["city"], str)
    second = client.responses.create(model=CHAT, previous_response_id=first.id, temperature=0, max_output_tokens=30,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": json.dumps({"weather": "sunny, 24 C"})}], tools=[WEATHER])
    assert second.previous_response_id == first.id and second.output_text.strip()
    # The model saw the whole conversation: the same as a chat completion of it.
    chat = client.chat.completions.create(model=CHAT, temperature=0, max_tokens=30, tools=[
        {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}], messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call.call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": json.dumps({"weather": "sunny, 24 C"})}])
    assert second.output_text == chat.choices[0].message.content
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]


def test_a_streamed_function_call(client):
    with client.responses.stream(model=CHAT, input="Weather in Rome?", tools=[WEATHER], temperature=0,
                                 tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = [o for o in final.output if o.type == "function_call"]
    assert call.arguments == arguments and json.loads(arguments)["city"]


def test_stored_responses_are_their_owners_alone(site, client):
    r = client.responses.create(model=CHAT, input="Hi", max_output_tokens=8, temperature=0)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    other = openai.OpenAI(base_url=site[1].url + "/v1", api_key=new_key(site[0]), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    with pytest.raises(openai.BadRequestError) as err:
        other.responses.create(model=CHAT, input="and?", previous_response_id=r.id, max_output_tokens=4)
    assert err.value.code == "previous_response_not_found"
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_store_false_keeps_nothing(client):
    r = client.responses.create(model=CHAT, input="Hi", max_output_tokens=4, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=CHAT, input="and?", previous_response_id=r.id, max_output_tokens=4)


@pytest.mark.parametrize("body, param", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "bogus": 1}, "bogus"),
])
def test_what_cannot_be_done_is_a_400_naming_the_field(site, key, body, param):
    r = httpx.post(site[1].url + "/v1/responses", json={"model": CHAT, **body}, timeout=30,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and param in (error["param"] or "") + error["message"]


def test_litellm_responses_client(site, key):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    r = litellm.responses(model=f"openai/{CHAT}", input="What is 2 + 2?", api_base=site[1].url + "/v1", api_key=key,
                          max_output_tokens=12, temperature=0)
    text = "".join(c.text for o in r.output if o.type == "message" for c in o.content)
    assert text.strip() and r.usage.output_tokens > 0


# -- reasoning -----------------------------------------------------------------------------------


def test_a_reasoning_models_real_output_comes_back_as_reasoning(client):
    """The template opens `<think>`; the bundled model's own tokens then stream as reasoning_content, not content,
    and they are exactly what the model writes after the template's prompt (a plain completion of that prompt)."""
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    chat = client.chat.completions.create(model=THINKER, messages=question, max_tokens=16, temperature=0)
    message = chat.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    prompt = "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    raw = client.completions.create(model=THINKER, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    assert "</think>" not in raw  # the model did not close the block in 16 tokens: all of it is reasoning
    assert reasoning == raw.lstrip() and reasoning.strip()
    assert message.content == ""
    stream = client.chat.completions.create(model=THINKER, messages=question, max_tokens=16, temperature=0, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == reasoning
    assert not "".join(d.content or "" for d in deltas)
    # Responses: a reasoning item, streamed as reasoning_text deltas.
    with client.responses.stream(model=THINKER, input="Why is the sky blue?", max_output_tokens=16,
                                 temperature=0) as s:
        events = list(s)
    # At its token limit the stream ends with `response.incomplete`, as OpenAI's does (the SDK's
    # get_final_response() waits for `response.completed` only).
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == reasoning
    [item] = final.output
    assert item.type == "reasoning" and item.content[0].text == reasoning
    assert final.usage.output_tokens_details.reasoning_tokens == final.usage.output_tokens == 16


def test_reasoning_effort_none_turns_thinking_off_in_the_template(client):
    """reasoning_effort reaches the template as enable_thinking: with "none" it writes the block closed, and the
    model's output is the answer."""
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    chat = client.chat.completions.create(model=THINKER, messages=question, max_tokens=12, temperature=0,
                                          reasoning_effort="none")
    assert chat.choices[0].message.content.strip()
    assert chat.choices[0].message.model_extra.get("reasoning_content") is None
    r = client.responses.create(model=THINKER, input="Why is the sky blue?", max_output_tokens=12, temperature=0,
                                reasoning={"effort": "none"})
    assert [o.type for o in r.output] == ["message"] and r.output_text == chat.choices[0].message.content


def test_reasoning_and_answer_split_to_the_character(client):
    said = "<think>\nThe user greets me; a greeting back fits.\n</think>\n\nHello to you too!"
    chat = client.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": said}])
    message = chat.choices[0].message
    assert message.model_extra["reasoning_content"] == "The user greets me; a greeting back fits.\n"
    assert message.content == "Hello to you too!"
    stream = client.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": said}], stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == message.model_extra["reasoning_content"]
    assert "".join(d.content or "" for d in deltas) == "Hello to you too!"
    r = client.responses.create(model=ECHO, input=said)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "The user greets me; a greeting back fits.\n"
    assert r.output_text == "Hello to you too!"
    # A reply without a block is all answer, `<think>` later in it included.
    plain = client.chat.completions.create(model=ECHO, messages=[{"role": "user", "content": "a <think> b"}])
    assert plain.choices[0].message.content == "a <think> b"
    assert plain.choices[0].message.model_extra.get("reasoning_content") is None


def test_the_openai_engine_passes_reasoning_through(client):
    """In front of a server with a reasoning model: its reasoning_content arrives as parley's, and reasoning_effort
    reaches it (with "none" the upstream's template closes the block, and the tokens are the answer)."""
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    direct = client.chat.completions.create(model=THINKER, messages=question, max_tokens=12, temperature=0)
    proxied = client.chat.completions.create(model=PROXIED, messages=question, max_tokens=12, temperature=0)
    assert proxied.choices[0].message.model_extra["reasoning_content"] == \
        direct.choices[0].message.model_extra["reasoning_content"]
    r = client.responses.create(model=PROXIED, input="Why is the sky blue?", max_output_tokens=12, temperature=0,
                                reasoning={"effort": "none"})
    off = client.chat.completions.create(model=THINKER, messages=question, max_tokens=12, temperature=0,
                                         reasoning_effort="none")
    assert [o.type for o in r.output] == ["message"] and r.output_text == off.choices[0].message.content


def test_usage_of_a_response_is_recorded_with_its_tokens(site, client):
    from sqlalchemy import select

    from parley.store.models import UsageRecord

    r = client.responses.create(model=CHAT, input="Name a fruit.", max_output_tokens=6, temperature=0)
    deadline = time.monotonic() + 10
    while True:  # usage is written in the background
        with site[0].session() as s:
            rows = s.scalars(select(UsageRecord).where(UsageRecord.endpoint == "/v1/responses",
                                                       UsageRecord.completion_tokens == r.usage.output_tokens,
                                                       UsageRecord.prompt_tokens == r.usage.input_tokens)).all()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows and rows[-1].status == 200 and rows[-1].model == CHAT and rows[-1].key_id


def test_input_items_page_through_a_long_conversation(client):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(25)]
    r = client.responses.create(model=CHAT, input=turns, max_output_tokens=2, temperature=0)
    listed = list(client.responses.input_items.list(r.id, limit=10))  # the SDK follows `after` page by page
    assert [i.content[0].text for i in listed] == [f"turn {i}" for i in reversed(range(25))]
    first = client.responses.input_items.list(r.id, limit=10, order="asc")
    assert first.has_more and len(first.data) == 10 and first.data[0].content[0].text == "turn 0"


def test_logprobs_come_when_include_asks_for_them(client):
    asked = client.responses.create(model=CHAT, input="Hi", max_output_tokens=4, temperature=0, top_logprobs=2,
                                    include=["message.output_text.logprobs"])
    entries = asked.output[0].content[0].logprobs
    assert len(entries) == asked.usage.output_tokens and all(len(e.top_logprobs) == 2 for e in entries)
    assert "".join(e.token for e in entries) == asked.output_text
    plain = client.responses.create(model=CHAT, input="Hi", max_output_tokens=4, temperature=0, top_logprobs=2)
    assert not plain.output[0].content[0].logprobs
