"""Input limits, the moderation hook, and model descriptions users can extend."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from parley.errors import ParleyError

# (model name prefix, description, link): shown under the model picker. Extend with --model-info FILE.
BUILTIN_MODEL_INFO = {
    "smollm2": ("SmolLM2-135M-Instruct, a tiny chat model by Hugging Face, bundled with parley",
                "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"),
    "vicuna": ("A chat assistant fine-tuned from LLaMA on user-shared conversations by LMSYS", "https://lmsys.org/blog/2023-03-30-vicuna/"),
    "llama": ("Meta's open foundation and chat models", "https://ai.meta.com/llama/"),
    "mistral": ("Mistral AI's open models", "https://mistral.ai/"),
    "qwen": ("Alibaba's Qwen open models", "https://qwenlm.github.io/"),
    "gpt-": ("OpenAI's GPT models, through an API", "https://openai.com/"),
    "claude": ("Anthropic's Claude models, through an API", "https://www.anthropic.com/"),
}

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


class ModelInfo:
    def __init__(self, extra_file: Path | None = None):
        self.table = dict(BUILTIN_MODEL_INFO)
        if extra_file:
            try:
                rows = json.loads(extra_file.read_text(encoding="utf-8"))
                self.table.update({name: (row["description"], row.get("link", "")) for name, row in rows.items()})
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                raise ParleyError(f"--model-info {extra_file}: expected {{\"model\": {{\"description\": ..., "
                                  f"\"link\": ...}}}} ({exc})") from None

    def describe(self, model: str | None) -> str:
        if not model:
            return ""
        matches = [k for k in self.table if model.lower().startswith(k.lower())]
        if not matches:
            return f"**{model}**"
        description, link = self.table[max(matches, key=len)]
        return f"**{model}**: {description}" + (f" ([link]({link}))" if link else "")
