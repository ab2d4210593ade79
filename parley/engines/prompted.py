"""Engines that compute tokens from a prompt (transformers, llama.cpp, echo): the chat layer they share.

A `GenerationRequest` arrives as the API built it. Here, and only here, its conversation is
rendered with the model's chat template (the template's stops join the request's), its output
constraints become a grammar (`response_format`, a forced tool call), and the reply's text is read
back into tool calls as it streams. What is left is a prompt request for the engine's own
`_generate_prompt`: the same type, with a prompt instead of messages.

An engine says what it can do (`supports_*`); anything else in a request is refused here with
InvalidRequestError, the same error whichever engine it is.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import AsyncIterator
from functools import cached_property

from jinja2 import TemplateError

from parley.conversation.formatter import ChatFormatter
from parley.conversation.output_constraints import (
    ReplyReader,
    ToolPlan,
    guided_from_response_format,
)
from parley.engines.base import (
    Engine,
    GenerationChunk,
    GenerationRequest,
    ToolCallDelta,
)
from parley.errors import InvalidPromptError, InvalidRequestError


def tool_call_deltas(calls: list[dict], seen: list[dict]) -> list[ToolCallDelta]:
    """OpenAI's streamed tool-call deltas between two cumulative lists of calls: a new call
    comes with its id, type and name; after that only argument text is added."""
    out = []
    for i, c in enumerate(calls):
        args = c["function"].get("arguments", "")
        if i >= len(seen):
            out.append(ToolCallDelta(index=i, id=c["id"], type="function",
                                     function={"name": c["function"]["name"], "arguments": args}))
        else:
            before = seen[i]["function"].get("arguments", "")
            if args != before:
                out.append(ToolCallDelta(index=i, function={
                    "arguments": args[len(before):] if args.startswith(before) else args}))
    return out


class PromptEngine(Engine):
    """An engine that generates from prompt text or token ids; subclasses implement `_generate_prompt`."""

    supports_logprobs = False
    supports_penalties = False  # presence and frequency
    supports_guided = False  # grammar-constrained decoding: structured output, forced tool calls
    _conv_template: str | None = None  # a named template instead of the model's own (EngineOptions.conv_template)

    @cached_property
    def formatter(self) -> ChatFormatter:
        return ChatFormatter.for_model(self.model_info, self._conv_template)

    @property
    def chat_template_name(self) -> str | None:
        return self.formatter.name

    @abstractmethod
    def _generate_prompt(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the reply to a request that has a prompt (or prompt token ids), never messages."""

    def _refuse_what_it_cannot_do(self, request: GenerationRequest) -> None:
        p = request.params
        if (p.presence_penalty or p.frequency_penalty) and not self.supports_penalties:
            raise InvalidRequestError(f"presence_penalty and frequency_penalty are not supported by the {self.name} engine")
        if p.logprobs is not None and not self.supports_logprobs:
            raise InvalidRequestError(f"logprobs are not supported by the {self.name} engine")
        if p.logprobs is not None and request.echo:
            raise InvalidRequestError("logprobs together with echo are not supported")

    def prepare(self, request: GenerationRequest) -> tuple[GenerationRequest, ReplyReader | None]:
        """The prompt request for `_generate_prompt` and, when tools are offered, how to read the reply
        back into tool calls. Rendering a long conversation takes a while: call it off the event loop."""
        self._refuse_what_it_cannot_do(request)
        guided = request.params.guided or guided_from_response_format(request.response_format)
        plan = ToolPlan.of(request.tools, request.tool_choice) if request.tools else None
        if plan is not None and plan.constraint is not None:
            guided = plan.constraint
        if guided is not None and not self.supports_guided:
            raise InvalidRequestError(f"structured output and forced tool calls are not supported by the {self.name} engine")
        params = request.params if guided is request.params.guided else request.params.model_copy(update={"guided": guided})
        update: dict = {"messages": None, "response_format": None, "tools": None, "tool_choice": None, "params": params,
                        "continue_final_message": False}
        if request.messages is not None:
            offered = request.tools if plan is not None and plan.mode != "none" else None
            try:
                rendered = self.formatter.render([m.model_dump(exclude_none=True) for m in request.messages], tools=offered,
                                                 continue_final=request.continue_final_message)
            except TemplateError as exc:  # a template that refuses these messages (`raise_exception`)
                raise InvalidPromptError(f"the chat template refused these messages: {exc}") from None
            except InvalidRequestError as exc:
                raise InvalidPromptError(str(exc)) from None
            update |= {"prompt": rendered.text, "add_special_tokens": rendered.add_special_tokens,
                       "params": params.with_stops(rendered.stop, rendered.stop_token_ids)}
        return request.model_copy(update=update), (plan.reader() if plan is not None else None)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt_request, reader = await asyncio.to_thread(self.prepare, request)
        chunks = self._generate_prompt(prompt_request)
        if reader is None:
            prefix = prompt_request.prompt if request.echo and prompt_request.prompt else ""
            async for chunk in chunks:
                if prefix:  # the reply starts with the prompt, in the first chunk
                    chunk, prefix = chunk.model_copy(update={"text": prefix + chunk.text}), ""
                yield chunk
            return
        text, sent, sent_calls = "", "", []
        async for chunk in chunks:
            text += chunk.text
            if chunk.finish_reason is None:
                content, calls = reader.partial(text)
                finish = None
            else:
                content, calls, finish = reader.final(text, chunk.finish_reason)
            new = content[len(sent):] if content.startswith(sent) else content
            sent = content
            deltas = tool_call_deltas(calls, sent_calls) if calls else []
            sent_calls = calls or sent_calls
            if new or deltas or chunk.logprobs or finish is not None:
                yield chunk.model_copy(update={"text": new, "tool_calls": deltas or None, "finish_reason": finish})
