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
import contextlib
from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cached_property

from jinja2 import TemplateError

from parley.conversation.formatter import ChatFormatter
from parley.conversation.output_constraints import (
    ReplyReader,
    ToolPlan,
    guided_from_response_format,
)
from parley.conversation.reasoning import (
    ReasoningSplitter,
    open_block,
    parser_name,
    starts_inside,
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
        if self.chat_template_text is not None:  # --chat-template FILE
            return ChatFormatter.for_model(self.model_info.model_copy(update={"chat_template": self.chat_template_text}))
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
        if request.prompt_logprobs is not None and request.messages is not None:
            raise InvalidRequestError("the prompt's log-probabilities (echo with logprobs) need a prompt, not messages")

    @cached_property
    def reasoning(self) -> str:
        """How this engine's chat replies are read: "think" (reasoning apart from the answer) or "none"."""
        template = self.chat_template_text or (None if self._conv_template else self.model_info.chat_template)
        return parser_name(self.reasoning_parser, template, self.model_info.name)

    def prepare(self, request: GenerationRequest) -> Prepared:
        """The prompt request for `_generate_prompt`, how to read the reply back into tool calls (when tools are
        offered), and into reasoning and answer (for a reasoning model's chat reply). Rendering a long
        conversation takes a while: call it off the event loop."""
        self._refuse_what_it_cannot_do(request)
        guided = request.params.guided or guided_from_response_format(request.response_format)
        plan = ToolPlan.of(request.tools, request.tool_choice) if request.tools else None
        if plan is not None and plan.constraint is not None:
            guided = plan.constraint
        if guided is not None and not self.supports_guided:
            raise InvalidRequestError(f"structured output and forced tool calls are not supported by the {self.name} engine")
        params = request.params if guided is request.params.guided else request.params.model_copy(update={"guided": guided})
        update: dict = {"messages": None, "response_format": None, "tools": None, "tool_choice": None, "params": params,
                        "continue_final_message": False, "reasoning_effort": None}
        splitter = None
        if request.messages is not None:
            offered = request.tools if plan is not None and plan.mode != "none" else None
            variables = None
            if request.reasoning_effort is not None:  # Qwen3's templates read enable_thinking, gpt-oss's the effort
                variables = {"reasoning_effort": request.reasoning_effort,
                             "enable_thinking": request.reasoning_effort not in ("none", "minimal")}
            try:
                rendered = self.formatter.render([m.model_dump(exclude_none=True) for m in request.messages], tools=offered,
                                                 continue_final=request.continue_final_message, variables=variables)
            except TemplateError as exc:  # a template that refuses these messages (`raise_exception`)
                raise InvalidPromptError(f"the chat template refused these messages: {exc}") from None
            except InvalidRequestError as exc:
                raise InvalidPromptError(str(exc)) from None
            update |= {"prompt": rendered.text, "add_special_tokens": rendered.add_special_tokens,
                       "params": params.with_stops(rendered.stop, rendered.stop_token_ids)}
            if self.reasoning == "think" and guided is None:
                inside = (open_block(request.messages[-1].content) if request.continue_final_message
                          else starts_inside(rendered.text))
                splitter = ReasoningSplitter(inside)
        return Prepared(request.model_copy(update=update), plan.reader() if plan is not None else None, splitter)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prepared = await asyncio.to_thread(self.prepare, request)
        prompt_request, reader, splitter = prepared.request, prepared.reader, prepared.splitter
        chunks = self._generate_prompt(prompt_request)
        if splitter is not None:
            chunks = _reasoning_apart(chunks, splitter)
        if reader is None:
            echo = request.echo
            async for chunk in chunks:
                if echo:  # the reply starts with the prompt (token ids: their text), in the first chunk
                    prefix = prompt_request.prompt or await self.detokenize(prompt_request.prompt_token_ids or [])
                    chunk, echo = chunk.model_copy(update={"text": prefix + chunk.text}), False
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
            if new or deltas or chunk.reasoning or chunk.logprobs or finish is not None:
                yield chunk.model_copy(update={"text": new, "tool_calls": deltas or None, "finish_reason": finish})


@dataclass
class Prepared:
    request: GenerationRequest  # with a prompt, for `_generate_prompt`
    reader: ReplyReader | None  # tool calls, when tools are offered
    splitter: ReasoningSplitter | None  # reasoning and answer, for a reasoning model's chat reply


async def _reasoning_apart(chunks: AsyncIterator[GenerationChunk], splitter: ReasoningSplitter
                           ) -> AsyncIterator[GenerationChunk]:
    """The chunks with their text read as reasoning and answer (what could still be a marker waits for the next).
    Closing this closes `chunks` (which cancels the request)."""
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            split = splitter.feed(chunk.text)
            if chunk.finish_reason is not None:
                rest = splitter.finish()
                split.reasoning += rest.reasoning
                split.content += rest.content
            yield chunk.model_copy(update={"text": split.content, "reasoning": split.reasoning})
