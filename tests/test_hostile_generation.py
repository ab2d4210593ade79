"""Requests built to be expensive stay bounded (issue 14): stop strings that keep partially
matching, schemas and tools nested or sized to exhaust the worker, grammars slow to compile.
Each fails alone, with an error that names what to change, and other streams go on."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from transformers import AutoTokenizer

from parley.conversation import tools as tc
from parley.conversation.output_constraints import ToolPlan, guided_from_response_format
from parley.engines.base import GenerationRequest, GuidedDecoding, SamplingParams
from parley.engines.guided import GRAMMAR_TIMEOUT_ENV, GrammarFactory, build_matcher
from parley.engines.hf.loading import model_directory
from parley.engines.sampling import SamplerFactory
from parley.engines.text_stream import StopStringMatcher
from parley.errors import InvalidRequestError
from parley.models.source import resolve_model_source

# -- stop strings ---------------------------------------------------------------------------

# 50 stops of about 5,000 'a's with a 'b': on a text of 'a's the last keeps a 5,000-character
# partial match alive, and each of the others is a prefix of the text's tail only up to its
# 'b'. The matcher this replaced tried every length of every stop at each push: 6.6 s of CPU
# for 2,000 characters of this, 48 s for 5,000.
PARTIAL_MATCHES = ["a" * i + "b" + "a" * (5000 - i) for i in range(49)] + ["a" * 5000 + "b"]
SHARED_PREFIX = ["a" * (4951 + i) + "b" for i in range(50)]  # one trie path: cheap for both


@pytest.mark.parametrize("stops", [PARTIAL_MATCHES, SHARED_PREFIX], ids=["partial-matches", "shared-prefix"])
def test_stop_matching_stays_linear_when_long_stops_keep_partially_matching(stops):
    text = "a" * 20_000
    started = time.thread_time()  # this thread's CPU: not other tests' threads, not waiting for a core
    m = StopStringMatcher(stops)
    shown = 0
    for i in range(0, len(text), 3):
        shown += len(m.push(text[i: i + 3]))
        read = min(i + 3, len(text))
        assert shown == read - min(read, 5000)  # exactly the possible start of a stop is held back
    tail = m.push("b")  # now the last 5,000 'a's and this 'b' are a stop
    elapsed = time.thread_time() - started
    assert tail == "" and m.stopped and shown == 15_000 and m.flush() == ""
    assert elapsed < 2.0, f"{elapsed:.2f} s of CPU for 20,000 characters"


# -- schema and tool bounds -----------------------------------------------------------------


def nested_schema(levels: int) -> dict:
    """A schema `levels` objects deep: {"not": {"not": ... {"type": "string"}}}."""
    schema: dict = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"not": schema}
    return schema


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}


def tool(name: str, parameters: dict | None = None, **extra) -> dict:
    fn = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}, **extra}
    return {"type": "function", "function": fn}


def test_a_schema_nested_too_deep_is_refused_naming_the_field():
    assert guided_from_response_format(json_schema_format(nested_schema(32))) is not None
    with pytest.raises(InvalidRequestError) as err:
        guided_from_response_format(json_schema_format(nested_schema(70)))
    assert str(err.value) == "response_format.json_schema.schema is nested 70 levels deep; the limit is 32"


def test_depth_is_measured_without_recursion():
    deep: list = []
    for _ in range(20_000):  # 40 kB of brackets: within the size bound, far past any recursion limit
        deep = [deep]
    with pytest.raises(InvalidRequestError, match="nested 20003 levels deep; the limit is 32"):
        guided_from_response_format(json_schema_format({"type": "array", "enum": [deep]}))
    deep = {}
    for _ in range(200_000):
        deep = {"not": deep}
    with pytest.raises(InvalidRequestError, match="larger than the limit of 64 KiB"):
        guided_from_response_format(json_schema_format(deep))


def test_a_schema_too_large_is_refused():
    ok = {"type": "string", "description": "x" * 60_000}
    assert guided_from_response_format(json_schema_format(ok)) is not None
    with pytest.raises(InvalidRequestError) as err:
        guided_from_response_format(json_schema_format({"type": "string", "description": "é" * 33_000}))  # 66 kB
    assert str(err.value) == ("response_format.json_schema.schema is larger than the limit of 64 KiB "
                              "(written as compact JSON)")


def test_json_extent_is_the_compact_json_size():
    value = {"a": [1, 2.5, None, True, False, "é\n\"", {}, []], "b": {"c": "🙂"}}
    assert tc.json_extent(value, 10**6) == (3, len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()))


def test_tools_are_bounded_in_number_size_and_depth():
    assert len(ToolPlan.of([tool(f"f{i}") for i in range(128)], "auto").functions) == 128
    with pytest.raises(InvalidRequestError, match=r"^tools has 129 tools; the limit is 128$"):
        ToolPlan.of([tool(f"f{i}") for i in range(129)], "auto")
    with pytest.raises(InvalidRequestError, match=r"^tools is larger than the limit of 256 KiB"):
        ToolPlan.of([tool(f"f{i}", description="d" * 3000) for i in range(100)], "auto")
    with pytest.raises(InvalidRequestError) as err:
        ToolPlan.of([tool("ok"), tool("deep", nested_schema(70))], "required")
    assert str(err.value) == "tools[1].function.parameters is nested 70 levels deep; the limit is 32"
    with pytest.raises(InvalidRequestError, match=r"^tools\[0\]\.function\.parameters is larger than the limit of 64 KiB"):
        ToolPlan.of([tool("big", {"type": "object", "description": "x" * 70_000})], "auto")
    with pytest.raises(InvalidRequestError, match=r"^tools\[0\] is nested 102 levels deep; the limit is 34$"):
        ToolPlan.of([tool("junk", extra=nested_schema(100))], "auto")  # depth outside the parameters too


# -- grammar compilation --------------------------------------------------------------------


def slow_schema(branches: int = 12) -> dict:
    """All of three any-ofs of `branches` open objects (closed ones compile to far less): llguidance
    expands the product of the branches (12: 1,728 combinations, about 0.7 s to compile here)."""
    return {"allOf": [{"anyOf": [{"type": "object", "properties": {f"k{j}_{i}": {"type": "integer"}},
                                  "additionalProperties": True}
                                 for i in range(branches)]} for j in range(3)]}


@pytest.fixture(scope="module")
def grammar_factory() -> GrammarFactory:
    """llguidance's view of the bundled model's real vocabulary (SmolLM2-135M-Instruct)."""
    tokenizer = AutoTokenizer.from_pretrained(model_directory(resolve_model_source(None)))
    return GrammarFactory.from_hf(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


class Ticker:
    """A task that ticks every 10 ms: the longest gap tells how long the event loop was held."""

    def __init__(self):
        self.gaps: list[float] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self):
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return max(self.gaps)


async def test_a_schema_slow_to_compile_is_refused_while_the_event_loop_keeps_serving(grammar_factory, monkeypatch):
    monkeypatch.setenv(GRAMMAR_TIMEOUT_ENV, "0.05")
    tools = SamplerFactory(lambda: grammar_factory)
    params = SamplingParams(guided=GuidedDecoding(kind="json_schema", json_schema=slow_schema()))
    ticker = Ticker()
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError, match=r"took longer than 0\.05 s to compile"):
        await tools.sampler(params)
    refused_after = time.perf_counter() - started
    await asyncio.sleep(0.3)  # the abandoned compilation goes on in its thread, and the loop with it
    longest_gap = await ticker.stop()
    assert refused_after < 0.5
    assert longest_gap < 0.25 and len(ticker.gaps) >= 15, f"the loop stalled for {longest_gap:.3f} s"
    monkeypatch.delenv(GRAMMAR_TIMEOUT_ENV)
    ticker = Ticker()
    sampler = await tools.sampler(params)  # the same schema within the default limit: slow, not invalid
    assert sampler.needs_row and await ticker.stop() < 0.25


async def test_a_grammar_past_llguidances_limits_is_refused_before_decoding(grammar_factory):
    # 2,744 combinations: the grammar compiles, and its first mask runs past llguidance's item
    # limit; that mask is computed while building the matcher, not in the engine's decoding step
    guided = GuidedDecoding(kind="json_schema", json_schema=slow_schema(14))
    with pytest.raises(InvalidRequestError, match=r"^the output constraint cannot be used: parser error: Too many items"):
        await build_matcher(grammar_factory, guided)


async def test_a_refused_grammar_fails_alone_on_the_real_model(engine, chat_request, monkeypatch):
    """A plain request and a valid guided one stream to the end on the bundled model while a
    request whose grammar is slow to compile is refused beside them."""
    monkeypatch.setenv(GRAMMAR_TIMEOUT_ENV, "0.05")  # the vocabulary's build (once per engine) is not counted

    async def run(request: GenerationRequest) -> tuple[str, str | None]:
        text, finish = "", None
        async for chunk in engine.generate_stream(request):
            text += chunk.text
            finish = chunk.finish_reason or finish
        return text, finish

    plain = chat_request("Count from one to ten.", temperature=0.0, max_new_tokens=24)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    valid = chat_request("Give me a number as JSON.", temperature=0.0, max_new_tokens=24,
                         guided=GuidedDecoding(kind="json_schema", json_schema=schema))
    hostile = chat_request("Hello", temperature=0.0, max_new_tokens=24,
                           guided=GuidedDecoding(kind="json_schema", json_schema=slow_schema()))
    ticker = Ticker()
    plain_result, hostile_result = await asyncio.gather(run(plain), run(hostile), return_exceptions=True)
    monkeypatch.delenv(GRAMMAR_TIMEOUT_ENV)
    valid_text, valid_finish = await run(valid)  # and guided decoding goes on working
    longest_gap = await ticker.stop()
    assert isinstance(hostile_result, InvalidRequestError) and "to compile" in str(hostile_result)
    text, finish = plain_result
    assert text.strip() and finish in ("stop", "length")
    assert isinstance(json.loads(valid_text)["n"], int) and valid_finish == "stop"
    assert longest_gap < 1.0, f"the loop stalled for {longest_gap:.3f} s"


async def test_a_grammar_that_gives_up_while_generating_ends_its_request_as_the_requests_fault(engine, chat_request):
    """This schema compiles and its first mask is fine, but llguidance's item limit stops it a few tokens
    in: the request ends with an error about its schema (a 400 at the API), not an internal error."""
    hostile = chat_request("Say hi.", temperature=0.0, max_new_tokens=8,
                           guided=GuidedDecoding(kind="json_schema", json_schema=slow_schema()))
    with pytest.raises(InvalidRequestError, match="too complex to follow while generating: Parser Error: .*items"):
        async for _ in engine.generate_stream(hostile):
            pass
    plain = chat_request("Say hi.", temperature=0.0, max_new_tokens=4)
    assert (await engine.generate(plain)).text  # and the engine serves on


def test_objects_that_say_nothing_of_other_keys_are_closed_but_open_ones_stay_open():
    from parley.engines.guided import closed_objects

    schema = {
        "type": "object", "properties": {
            "city": {"type": "string"},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "extra": {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
            "free": {"type": "object"},
            "either": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]},
            "both": {"allOf": [{"properties": {"x": {}}}, {"properties": {"y": {}}}]},
        },
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}}},
    }
    closed = closed_objects(schema)
    props = closed["properties"]
    assert closed["additionalProperties"] is False
    assert props["where"]["additionalProperties"] is False
    assert props["tags"]["items"]["additionalProperties"] is False
    assert props["extra"]["additionalProperties"] is True  # said: kept
    assert "additionalProperties" not in props["free"]  # no properties listed: any object, as before
    assert closed["$defs"]["point"]["additionalProperties"] is False
    assert all("additionalProperties" not in branch for branch in props["both"]["allOf"])  # would forbid each other
    assert "additionalProperties" not in schema  # the request's own schema is not changed
