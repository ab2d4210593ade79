"""Tool calling without a model: declaring tools in prompts, and reading replies back into calls."""

from __future__ import annotations

import json

import pytest

from parley.conversation import tools as tc
from parley.conversation.formatter import ChatFormatter
from parley.conversation.output_constraints import ToolPlan, guided_from_response_format
from parley.errors import InvalidRequestError

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# A tool-aware template in the style of Qwen2.5's: it renders `tools`, tool calls and tool results itself.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>tool\n{{ m.content }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HISTORY = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": -3}"},
]


def test_a_template_without_tools_gets_them_in_the_system_prompt_and_history_in_hermes_form():
    text = ChatFormatter(model_template=CHATML).render(HISTORY, tools=[WEATHER]).text
    assert text.startswith("<|im_start|>system\nYou are a function calling AI model")
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert '<|im_start|>user\n<tool_response>\n{"temp": -3}\n</tool_response><|im_end|>' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_a_tool_aware_template_renders_tools_and_calls_itself():
    formatter = ChatFormatter(model_template=TOOL_TEMPLATE)
    assert formatter.supports_tools
    text = formatter.render(HISTORY, tools=[WEATHER]).text
    assert text.startswith("<|im_start|>system\nTools: get_weather<|im_end|>")
    assert '<tool_call>get_weather {"city": "Oslo"}</tool_call>' in text  # arguments as an object
    assert "<|im_start|>tool\n{\"temp\": -3}<|im_end|>" in text


def test_named_templates_take_tools_too():
    text = ChatFormatter.named_template("vicuna_v1.1").render(HISTORY, tools=[WEATHER]).text
    assert "<tool_call>" in text and "<tool_response>" in text


@pytest.mark.parametrize("text, content, calls", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', "",
     [("get_weather", {"city": "Rome"})]),
    ('Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>\n'
     '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', "Let me check.",
     [("get_weather", {"city": "Rome"}), ("get_weather", {"city": "Paris"})]),
    ('{"name": "get_weather", "arguments": {"city": "Rome"}}', "", [("get_weather", {"city": "Rome"})]),
    ('[{"name": "get_weather", "parameters": {"city": "Rome"}}]', "", [("get_weather", {"city": "Rome"})]),
])
def test_tool_calls_are_parsed_from_hermes_blocks_and_plain_json(text, content, calls):
    parsed = tc.parse_calls(text, tc.functions_of([WEATHER]))
    assert parsed is not None
    got_content, got_calls = parsed
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == calls
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in got_calls)


@pytest.mark.parametrize("text", ["Paris is sunny.", '{"name": "unknown_tool", "arguments": {}}',
                                  "<tool_call>{not json}</tool_call>", '{"city": "Rome"}'])
def test_text_that_is_not_a_valid_call_stays_text(text):
    assert tc.parse_calls(text, tc.functions_of([WEATHER])) is None


def test_auto_mode_holds_back_only_what_may_become_a_call():
    reader = ToolPlan.of([WEATHER], "auto").reader()
    assert reader.partial('{"name": "get_w') == ("", None)
    assert reader.partial("<tool_") == ("", None)
    assert reader.partial("It is sunny <tool") == ("It is sunny ", None)
    assert reader.partial("It is sunny today.") == ("It is sunny today.", None)
    content, calls, finish = reader.final('{"name": "get_weather", "arguments": {"city": "Rome"}}', "stop")
    assert content == "" and calls[0]["function"]["name"] == "get_weather" and finish == "tool_calls"
    assert reader.final("Just text.", "stop") == ("Just text.", None, "stop")


def test_forced_choices_constrain_the_output():
    named = ToolPlan.of([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert named.constraint.json_schema == WEATHER["function"]["parameters"]
    reader = named.reader()
    _, calls = reader.partial('{"city": "Ro')
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Ro'}
    assert reader.final('{"city": "Rome"}', "stop")[1][0]["id"] == calls[0]["id"]  # one id while streaming
    required = ToolPlan.of([WEATHER], "required")
    assert required.constraint.json_schema["properties"]["name"] == {"const": "get_weather"}
    content, calls, finish = required.reader().final('{"name": "get_weather", "arguments": {"city": "Rome"}}', "stop")
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"} and finish == "tool_calls"


@pytest.mark.parametrize("tools, choice, fragment", [
    ([{"type": "function"}], "auto", r"tools\[0\]"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
    ([WEATHER], "sometimes", "tool_choice"),
])
def test_bad_tool_requests_are_refused_clearly(tools, choice, fragment):
    with pytest.raises(InvalidRequestError, match=fragment):
        ToolPlan.of(tools, choice)


def test_response_formats():
    assert guided_from_response_format(None) is None and guided_from_response_format({"type": "text"}) is None
    assert guided_from_response_format({"type": "json_object"}).kind == "json_object"
    schema = {"type": "object"}
    assert guided_from_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}).json_schema == schema
    for bad in ({"type": "json_schema"}, {"type": "yaml"}):
        with pytest.raises(InvalidRequestError):
            guided_from_response_format(bad)
