"""What a reply must look like: OpenAI's `response_format`, and tools with `tool_choice`.

The worker turns `response_format` into a grammar constraint for the engine, and with tools
decides how the model's text becomes `tool_calls`: a forced call (`required` or a named
function) is constrained to valid JSON for the declared parameters; with `auto` the reply is
held back while it may still be a call, and parsed when it ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from parley.conversation import tools as tc
from parley.engines.base import GuidedDecoding
from parley.errors import InvalidRequestError

# Schemas and tools are bounded (depth and size; tools also in number) before any model work,
# by the constants at the top of parley.conversation.tools, where tools are parsed; the
# grammar a schema becomes is then bounded by llguidance's limits and a compile timeout
# (parley.engines.guided).


def guided_from_response_format(response_format: Mapping | None) -> GuidedDecoding | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return GuidedDecoding(kind="json_object")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError("response_format.json_schema.schema must be a JSON schema object")
        tc.check_json_bounds(schema, "response_format.json_schema.schema", tc.MAX_SCHEMA_DEPTH, tc.MAX_SCHEMA_BYTES)
        return GuidedDecoding(kind="json_schema", json_schema=dict(schema))
    raise InvalidRequestError(f"response_format.type must be text, json_object or json_schema, not {kind!r}")


@dataclass
class ToolPlan:
    functions: list[dict]
    mode: Literal["none", "auto", "required", "named"]
    name: str | None = None  # for "named"
    constraint: GuidedDecoding | None = None

    @classmethod
    def of(cls, tools: list[dict], tool_choice) -> ToolPlan:
        functions = tc.functions_of(tools)
        if tool_choice in (None, "auto"):
            return cls(functions, "auto")
        if tool_choice == "none":
            return cls(functions, "none")
        if tool_choice == "required":
            return cls(functions, "required", constraint=tc.forced_call_constraint(functions, None))
        if isinstance(tool_choice, Mapping):
            name = tc.chosen_function(tool_choice, functions)
            return cls(functions, "named", name, tc.forced_call_constraint(functions, name))
        raise InvalidRequestError("tool_choice must be none, auto, required or {'type': 'function', 'function': {'name': ...}}")

    def reader(self) -> ReplyReader:
        return ReplyReader(self)


@dataclass
class ReplyReader:
    """Turns one reply's text into (content, tool calls) as it grows, and at its end."""

    plan: ToolPlan
    call_id: str = field(default_factory=tc.new_call_id)

    def partial(self, text: str) -> tuple[str, list[dict] | None]:
        mode = self.plan.mode
        if mode == "named":  # the text is the arguments, streamed as they come
            return "", [tc.call(self.plan.name, text, self.call_id)]
        if mode == "required":
            return "", None
        if mode == "auto":
            return ("", None) if tc.could_become_call(text) else (text[: tc.safe_prefix(text)], None)
        return text, None

    def final(self, text: str, finish: str) -> tuple[str, list[dict] | None, str]:
        mode = self.plan.mode
        if mode == "named":
            return "", [tc.call(self.plan.name, text, self.call_id)], finish
        if mode == "required":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:  # cut short by max_tokens: no valid call
                return text, None, finish
            return "", [tc.call(obj["name"], obj["arguments"], self.call_id)], "tool_calls"
        if mode == "auto":
            parsed = tc.parse_calls(text, self.plan.functions)
            if parsed is not None:
                content, calls = parsed
                if tc.OPEN in text:
                    content = text[: text.index(tc.OPEN)]
                return content, calls, "tool_calls"
        return text, None, finish
