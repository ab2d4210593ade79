"""What the model picker says of each model: built-in descriptions, extended with --model-info FILE."""

from __future__ import annotations

import json
from pathlib import Path

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


class ModelDescriptions:
    def __init__(self, extra_file: Path | None = None):
        self.table = dict(BUILTIN_MODEL_INFO)
        if extra_file:
            try:
                rows = json.loads(extra_file.read_text(encoding="utf-8"))
                self.table.update({name: (row["description"], row.get("link", "")) for name, row in rows.items()})
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                raise ParleyError(f"--model-info {extra_file}: expected {{\"model\": {{\"description\": ..., "
                                  f"\"link\": ...}}}} ({exc})") from None

    def lookup(self, model: str) -> tuple[str | None, str | None]:
        """The description and link of the longest matching name prefix, or (None, None)."""
        matches = [k for k in self.table if model.lower().startswith(k.lower())]
        if not matches:
            return None, None
        description, link = self.table[max(matches, key=len)]
        return description, link or None

    def describe(self, model: str | None) -> str:
        if not model:
            return ""
        description, link = self.lookup(model)
        if description is None:
            return f"**{model}**"
        return f"**{model}**: {description}" + (f" ([link]({link}))" if link else "")
