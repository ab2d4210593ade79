"""Which named template a model gets from its name, when it has no chat template of its own.

An ordered table: the first pattern that matches (case-insensitive, anywhere in the name)
wins, so more specific names come before the families they contain (a zephyr or an
OpenHermes fine-tune of Mistral is not a Mistral-Instruct; Llama-3 is not Llama-2).
"""

from __future__ import annotations

import re

NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"vicuna|wizardlm-(7|13|30)b-v1\.[12]", "vicuna_v1.1"),
    (r"zephyr", "zephyr"),
    (r"hermes|dolphin|qwen|smollm|chatml|\byi-.*chat", "chatml"),
    (r"llama-?3|llama3", "llama-3"),
    (r"llama-?2.*chat|llama2.*chat|codellama.*instruct", "llama-2"),
    (r"mistral|mixtral", "mistral"),
    (r"gemma", "gemma"),
    (r"chatglm3", "chatglm3"),
    (r"dolly", "dolly_v2"),
    (r"falcon", "falcon"),
    (r"alpaca", "alpaca"),
)

DEFAULT_TEMPLATE = "one_shot"  # FastChat's default for unknown models

_COMPILED = tuple((re.compile(p, re.IGNORECASE), name) for p, name in NAME_RULES)


def template_for_model_name(model_name: str) -> str | None:
    for pattern, name in _COMPILED:
        if pattern.search(model_name):
            return name
    return None
