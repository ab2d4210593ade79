"""The request shapes `parley bench` compares: plain, JSON-schema output, a forced tool call; each in the chat
completions API's terms (MODES) and the Responses API's (RESPONSES_MODES)."""

from __future__ import annotations

# The constrained modes ask for the same long text inside a structure. The story must be at
# least 2000 characters, so the structure never closes before max_tokens: every mode
# generates the same number of tokens and the throughput ratio measures the constraint's cost.
STORY_SCHEMA = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60}, "story": {"type": "string", "minLength": 2000}},
                "required": ["title", "story"], "additionalProperties": False}
MODES: dict[str, dict] = {
    "plain": {},
    "json": {"response_format": {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}},
    "tools": {"tools": [{"type": "function", "function": {"name": "publish_story", "description": "Publish a story",
                                                          "parameters": STORY_SCHEMA}}],
              "tool_choice": {"type": "function", "function": {"name": "publish_story"}}},
}
RESPONSES_MODES: dict[str, dict] = {
    "plain": {},
    "json": {"text": {"format": {"type": "json_schema", "name": "story", "schema": STORY_SCHEMA}}},
    "tools": {"tools": [{"type": "function", "name": "publish_story", "description": "Publish a story",
                         "parameters": STORY_SCHEMA}],
              "tool_choice": {"type": "function", "name": "publish_story"}},
}
