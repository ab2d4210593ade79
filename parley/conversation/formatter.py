"""Render a conversation into the prompt text a model expects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, field_validator

from parley.conversation import tools as tool_calls
from parley.conversation.matching import DEFAULT_TEMPLATE, template_for_model_name
from parley.conversation.templates import (
    NAMED_TEMPLATES,
    NamedTemplate,
    written_named_template,
)
from parley.engines.base import ModelInfo
from parley.errors import InvalidRequestError, ParleyError


def render_jinja_template(**kwargs):
    """transformers' chat-template renderer, imported when first used (a gateway or controller that never
    renders a template does not load transformers)."""
    from transformers.utils.chat_template_utils import render_jinja_template as render

    return render(**kwargs)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message content is empty")
        return value


class RenderedPrompt(BaseModel):
    text: str
    add_special_tokens: bool  # False when the template already wrote BOS and friends
    stop: list[str] = []
    stop_token_ids: list[int] = []
    template: str  # "model" for the tokenizer's own template, else the named template


def validate_messages(messages: Sequence[Mapping | ChatMessage]) -> list[ChatMessage]:
    try:
        parsed = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(dict(m)) for m in messages]
    except ValueError as exc:
        raise InvalidRequestError(f"invalid messages: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None
    if not parsed:
        raise InvalidRequestError("no messages")
    if any(m.role == "system" for m in parsed[1:]):
        raise InvalidRequestError("a system message may only come first")
    turns = [m for m in parsed if m.role != "system"]
    for i, m in enumerate(turns):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise InvalidRequestError("messages must alternate user/assistant, starting with user")
    return parsed


class ChatFormatter:
    """Either a model's own Jinja template or one of the named templates."""

    def __init__(self, named: NamedTemplate | None = None, model_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None):
        if (named is None) == (model_template is None):
            raise ValueError("give exactly one of named and model_template")
        self.named = named
        self._model_template = model_template
        self._special = {"bos_token": bos_token or "", "eos_token": eos_token or ""}

    @property
    def name(self) -> str:
        return self.named.name if self.named else "model"

    @classmethod
    def named_template(cls, name: str) -> ChatFormatter:
        try:
            return cls(named=NAMED_TEMPLATES[name])
        except KeyError:
            raise ParleyError(f"unknown chat template {name!r}; known: {', '.join(sorted(NAMED_TEMPLATES))}") from None

    @classmethod
    def for_model(cls, info: ModelInfo, conv_template: str | None = None) -> ChatFormatter:
        """`--conv-template` if given; else the model's own template; else by model name; else one_shot."""
        if conv_template:
            return cls.named_template(conv_template)
        if info.chat_template and (written := written_named_template(info.chat_template)):
            return cls(named=written)  # fine-tuned with a named template: render it as such, with its stop rules
        if info.chat_template:
            return cls(model_template=info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token)
        return cls.named_template(template_for_model_name(info.name) or DEFAULT_TEMPLATE)

    @property
    def supports_tools(self) -> bool:
        """Whether the model's own template declares tools itself (it refers to `tools`)."""
        return self._model_template is not None and "tools" in self._model_template

    def render(self, messages: Sequence[Mapping | ChatMessage], add_generation_prompt: bool = True,
               tools: Sequence[Mapping] | None = None, continue_final: bool = False,
               variables: Mapping | None = None) -> RenderedPrompt:
        """`tools` (OpenAI's tool objects) and messages carrying `tool_calls` or the `tool` role are
        rendered by the template when it knows tools, else in the Hermes convention. `continue_final`: the
        prompt ends inside the last message (the assistant's), cut after its text, so that the reply goes on
        with it. `variables`: more for a model's own template to read (`enable_thinking`, `reasoning_effort`)."""
        if continue_final:
            return self._continuing(messages, variables)
        extra = dict(variables or {}) | self._special
        raw = [m.model_dump() if isinstance(m, ChatMessage) else dict(m) for m in messages]
        if tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in raw):
            functions = tool_calls.functions_of(tools or [])
            if self.supports_tools:
                text = render_jinja_template(
                    conversations=[tool_calls.for_tool_template(raw)], chat_template=self._model_template,
                    tools=[{"type": "function", "function": f} for f in functions] or None,
                    add_generation_prompt=add_generation_prompt, **extra,
                )[0][0]
                return RenderedPrompt(text=text, add_special_tokens=False, template="model")
            messages = tool_calls.flatten(raw, functions)
        parsed = validate_messages(messages)
        if self.named is None:
            chat = [m.model_dump() for m in parsed]
            text = render_jinja_template(
                conversations=[chat], chat_template=self._model_template,
                add_generation_prompt=add_generation_prompt, **extra,
            )[0][0]
            return RenderedPrompt(text=text, add_special_tokens=False, template="model")
        return self._render_named(self.named, parsed, add_generation_prompt)

    def _continuing(self, messages: Sequence[Mapping | ChatMessage], variables: Mapping | None) -> RenderedPrompt:
        raw = [m.model_dump() if isinstance(m, ChatMessage) else dict(m) for m in messages]
        final = str(raw[-1].get("content") or "").strip() if raw else ""
        if not raw or raw[-1].get("role") != "assistant" or not final:
            raise InvalidRequestError("continuing needs a last message from the assistant, with text")
        rendered = self.render(raw, add_generation_prompt=False, variables=variables)
        at = rendered.text.rfind(final)
        if at < 0:
            raise InvalidRequestError("this chat template changes the assistant's text, so a reply cannot be "
                                      "continued with it")
        return rendered.model_copy(update={"text": rendered.text[: at + len(final)]})

    @staticmethod
    def _render_named(t: NamedTemplate, parsed: list[ChatMessage], add_generation_prompt: bool) -> RenderedPrompt:
        system = parsed[0].content if parsed[0].role == "system" else t.system_message
        role_of = {"user": t.roles[0], "assistant": t.roles[1]}
        turns = [{"role": r, "content": c} for r, c in t.examples]
        turns += [{"role": role_of[m.role], "content": m.content} for m in parsed if m.role != "system"]
        text = render_jinja_template(
            conversations=[[]], chat_template=t.jinja, add_generation_prompt=add_generation_prompt,
            system_message=system, system_prompt=t.system_template.format(system_message=system),
            turns=turns, roles=list(t.roles), sep=t.sep, sep2=t.sep2,
        )[0][0]
        # FastChat's prompts rely on the tokenizer adding BOS, so tokenize with special tokens.
        return RenderedPrompt(text=text, add_special_tokens=True, stop=list(t.stop),
                              stop_token_ids=list(t.stop_token_ids), template=t.name)
