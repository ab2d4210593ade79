"""What users may send: input limits and the moderation hook."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pydantic import BaseModel

from parley.errors import ParleyError

# A moderation hook: given the user's text, return None to allow it or a message to refuse it.
Moderator = Callable[[str], "str | None"]


class Limits(BaseModel):
    max_input_chars: int = 8000
    max_turns: int = 20  # user messages per conversation


def check_input(text: str, turns_so_far: int, limits: Limits, moderator: Moderator | None = None) -> str | None:
    """None when the message may be sent, else what to tell the user."""
    if not text.strip():
        return "Type a message first."
    if len(text) > limits.max_input_chars:
        return f"Your message is {len(text)} characters long; the limit is {limits.max_input_chars}."
    if turns_so_far >= limits.max_turns:
        return f"This conversation has reached {limits.max_turns} turns. Start a new one to go on."
    if moderator is not None:
        verdict = moderator(text)
        if verdict:
            return verdict
    return None


def load_moderator(spec: str | None) -> Moderator | None:
    """`package.module:function` -> the function (no network calls unless that function makes them)."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ParleyError(f"--moderation {spec}: {exc}") from None
    if not callable(hook):
        raise ParleyError(f"--moderation {spec} is not callable")
    return hook
