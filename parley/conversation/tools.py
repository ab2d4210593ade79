"""Tool calling on local models: prompts that declare tools, the constraint for a forced call,
and parsing what the model wrote back into OpenAI's `tool_calls`.

A chat template that knows tools (it refers to `tools`) renders them itself. For one that does
not, tools are declared in the system prompt in the Hermes/Qwen convention (`<tool_call>` JSON
blocks), assistant tool calls are written back in that form and tool results become
`<tool_response>` user turns, so any chat model can be offered tools.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring

from parley.engines.base import GuidedDecoding
from parley.errors import InvalidRequestError

# Bounds on what a request may declare, checked before any model work: a schema becomes a
# grammar (compiled per request) and tools are rendered into every prompt, so both are kept
# to sizes that real requests stay far below. Sizes are of the value written as compact JSON
# (UTF-8); depth counts nested objects and arrays ({"type": "object"} is 1 level deep).
MAX_SCHEMA_DEPTH = 32  # a JSON schema: response_format.json_schema.schema, or a tool's parameters
MAX_SCHEMA_BYTES = 64 * 1024
MAX_TOOLS = 128
MAX_TOOLS_BYTES = 256 * 1024  # all of `tools` together
_TOOL_WRAPPING = 2  # the levels a tool adds around its parameters: {"function": {"parameters": ...}}

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def json_extent(value: object, stop_after: int) -> tuple[int, int]:
    """(nesting depth, size in bytes as compact JSON) of a parsed JSON value, found without
    recursion, so no depth can exhaust the stack. The walk stops once the size passes
    `stop_after` (the size returned is then only a lower bound), so it costs no more than the
    bound whatever the value's size."""
    depth = size = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack and size <= stop_after:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            depth = max(depth, level)
            size += 1 + max(2 * len(item), 1)  # braces, colons and commas
            for key, child in item.items():
                if size > stop_after:
                    break
                size += len(encode_basestring(str(key)).encode())
                stack.append((child, level + 1))
        elif isinstance(item, (list, tuple)):
            depth = max(depth, level)
            size += 1 + max(len(item), 1)  # brackets and commas
            if size <= stop_after:
                stack.extend((child, level + 1) for child in item)
        elif isinstance(item, str):
            size += len(encode_basestring(item).encode())
        elif item is None or isinstance(item, bool):
            size += 4 if item in (None, True) else 5
        else:
            size += len(repr(item))
    return depth, size


def check_json_bounds(value: object, field: str, max_depth: int, max_bytes: int) -> None:
    """Refuse a request field (a parsed JSON value) that is nested too deep or is too large."""
    depth, size = json_extent(value, max_bytes)
    if size > max_bytes:
        raise InvalidRequestError(_too_large(field, max_bytes))
    if depth > max_depth:
        raise InvalidRequestError(f"{field} is nested {depth} levels deep; the limit is {max_depth}")


def _too_large(field: str, max_bytes: int) -> str:
    limit = f"{max_bytes // 1024} KiB" if max_bytes % 1024 == 0 else f"{max_bytes} bytes"
    return f"{field} is larger than the limit of {limit} (written as compact JSON)"


def functions_of(tools: Sequence[Mapping]) -> list[dict]:
    """The `function` objects of OpenAI tools, checked (shape and bounds)."""
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"tools has {len(tools)} tools; the limit is {MAX_TOOLS}")
    out, total = [], 0
    for i, tool in enumerate(tools):
        fn = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise InvalidRequestError(f"tools[{i}].function.parameters must be a JSON schema object")
        depth, size = json_extent(tool, MAX_TOOLS_BYTES - total)
        total += size + 1
        if total > MAX_TOOLS_BYTES:
            raise InvalidRequestError(_too_large("tools", MAX_TOOLS_BYTES))
        if depth > MAX_SCHEMA_DEPTH + _TOOL_WRAPPING or size > MAX_SCHEMA_BYTES:  # name the part at fault
            check_json_bounds(params, f"tools[{i}].function.parameters", MAX_SCHEMA_DEPTH, MAX_SCHEMA_BYTES)
            if depth > MAX_SCHEMA_DEPTH + _TOOL_WRAPPING:
                raise InvalidRequestError(f"tools[{i}] is nested {depth} levels deep; "
                                          f"the limit is {MAX_SCHEMA_DEPTH + _TOOL_WRAPPING}")
        out.append({"name": fn["name"], "description": fn.get("description", ""), "parameters": dict(params)})
    return out


def chosen_function(tool_choice, functions: list[dict]) -> str | None:
    """The function a `{"type": "function", "function": {"name": ...}}` choice names, checked."""
    if not isinstance(tool_choice, Mapping):
        return None
    name = (tool_choice.get("function") or {}).get("name")
    if name not in {f["name"] for f in functions}:
        raise InvalidRequestError(f"tool_choice names the function {name!r}, which is not among the tools")
    return name


def tool_system_prompt(functions: list[dict], system: str | None) -> str:
    listing = "\n".join(json.dumps({"type": "function", "function": f}) for f in functions)
    prompt = (
        "You are a function calling AI model. You may call one or more functions to assist with the user query. "
        "Here are the available tools:\n<tools>\n" + listing + "\n</tools>\n"
        "For each function call, return a JSON object with the function name and arguments within "
        '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )
    return f"{system}\n\n{prompt}" if system else prompt


def _arguments(call: Mapping) -> object:
    raw = (call.get("function") or {}).get("arguments", "{}")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return raw


def for_tool_template(messages: Sequence[Mapping]) -> list[dict]:
    """Messages as Hugging Face tool-aware templates take them (arguments as objects)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{"type": "function", "id": c.get("id"),
                                "function": {"name": (c.get("function") or {}).get("name"), "arguments": _arguments(c)}}
                               for c in m["tool_calls"]]
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def flatten(messages: Sequence[Mapping], functions: list[dict]) -> list[dict]:
    """Messages with tool calls and results, for a template that knows only system/user/assistant."""
    out: list[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            blocks = [OPEN + "\n" + json.dumps({"name": (c.get("function") or {}).get("name"),
                                                "arguments": _arguments(c)}) + "\n" + CLOSE for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(filter(None, [content, *blocks]))})
        elif role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        else:
            out.append({"role": role, "content": content})
    for m in out:
        m.pop("_tool", None)
    if functions:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": tool_system_prompt(functions, out[0]["content"])}
        else:
            out.insert(0, {"role": "system", "content": tool_system_prompt(functions, None)})
    return out


def forced_call_constraint(functions: list[dict], name: str | None) -> GuidedDecoding:
    """`tool_choice` required (any function) or named: the output is one call as JSON. For a
    named function, just its arguments; otherwise `{"name": ..., "arguments": {...}}`."""
    if name is not None:
        params = next(f["parameters"] for f in functions if f["name"] == name)
        return GuidedDecoding(kind="json_schema", json_schema=params)
    options = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    return GuidedDecoding(kind="json_schema", json_schema=options[0] if len(options) == 1 else {"anyOf": options})


def call(name: str, arguments: object, call_id: str | None = None) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id or new_call_id(), "type": "function", "function": {"name": name, "arguments": args}}


def parse_calls(text: str, functions: list[dict]) -> tuple[str, list[dict]] | None:
    """(content before the calls, calls) when `text` holds tool calls in the Hermes form or as
    plain JSON (`{"name": ..., "arguments": ...}`, or a list of them); None otherwise."""
    names = {f["name"] for f in functions}
    stripped = text.strip()
    if OPEN in text:
        content = text[: text.index(OPEN)].strip()
        objects = []
        for block in _BLOCK.findall(text):
            try:
                objects.append(json.loads(block))
            except json.JSONDecodeError:
                return None
    elif stripped.startswith(("{", "[")):
        content = ""
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        objects = value if isinstance(value, list) else [value]
    else:
        return None
    calls = []
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(call(obj["name"], args))
    return (content, calls) if calls else None


def could_become_call(text: str) -> bool:
    """Whether the reply so far may still turn into a tool call (so it must not be streamed as text)."""
    stripped = text.lstrip()
    return (not stripped or stripped.startswith(("{", "[")) or stripped.startswith(OPEN)
            or OPEN.startswith(stripped))


def safe_prefix(text: str) -> int:
    """How much of plain text can be streamed without cutting into a `<tool_call>` that may follow."""
    cut = text.find(OPEN)
    if cut >= 0:
        return cut
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-k:]):
            return len(text) - k
    return len(text)
