"""Serving OpenAI's Responses API over the cluster: what `/v1/responses` calls.

A request becomes a chat request (parley.serving.responses_schemas), then parley's GenerationRequest, and goes
the way chat goes (parley.serving.openai_serving: the same replies, metrics and usage). Its deltas become output
items — reasoning, message, function calls — and, when streamed, OpenAI's typed events in OpenAI's order:
`response.created`, `response.in_progress`, then for each item `response.output_item.added`, its content's
deltas (`response.reasoning_text.delta`, `response.output_text.delta`, `response.function_call_arguments.delta`)
and their `done` events, `response.output_item.done`, and last `response.completed` (or `response.incomplete`,
when the reply reached `max_output_tokens`, or `error` then `response.failed`).

With `store` (OpenAI's default) and a database, the response is kept for the key's owner, with the conversation it
answered, so that `previous_response_id` continues it and `GET`/`DELETE /v1/responses/{id}` find it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from parley.engines.base import GenerationChunk
from parley.serving.api_errors import APIError, bad_request
from parley.serving.cluster_errors import ClusterError
from parley.serving.key_auth import Caller
from parley.serving.openai_schemas import UnsupportedField, UsageInfo
from parley.serving.openai_serving import APIRequest, OpenAIServing, api_error
from parley.serving.replies import merged_deltas
from parley.serving.responses_schemas import (
    DeletedResponse,
    FunctionCallItem,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputItem,
    InputItemList,
    MessageItem,
    OutputFunctionCall,
    OutputMessage,
    OutputReasoning,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    item_id,
)
from parley.store.responses import Kept, ResponseStore

log = logging.getLogger("parley.api")

# A chat field's name in the Responses request, for the 400 that names it.
_PARAM = {"response_format": "text.format", "messages": "input", "max_completion_tokens": "max_output_tokens",
          "top_logprobs": "top_logprobs"}


def not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", type="invalid_request_error")


class OutputBuilder:
    """A reply's output items, built from its deltas; each change is also returned as the stream's events."""

    def __init__(self, response: ResponseObject):
        self.response = response
        self.open: BaseModel | None = None  # the item deltas go to now
        self._answering = False
        self._before_answer = 0
        self._calls: dict[int, OutputFunctionCall] = {}

    @property
    def _index(self) -> int:
        return len(self.response.output) - 1

    def _start(self, item: BaseModel) -> list[dict]:
        events = self._close()
        self.response.output.append(item)
        self.open = item
        events.append({"type": "response.output_item.added", "output_index": self._index,
                       "item": item.model_dump()})
        if isinstance(item, OutputReasoning):
            item.content.append(ReasoningText())
            events.append({"type": "response.content_part.added", "item_id": item.id, "output_index": self._index,
                           "content_index": 0, "part": ReasoningText().model_dump()})
        elif isinstance(item, OutputMessage):
            item.content.append(OutputText())
            events.append({"type": "response.content_part.added", "item_id": item.id, "output_index": self._index,
                           "content_index": 0, "part": OutputText().model_dump()})
        return events

    def _close(self, status: str = "completed") -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.response.output.index(item)
        events: list[dict] = []
        if isinstance(item, OutputReasoning):
            part = item.content[0]
            events += [{"type": "response.reasoning_text.done", "item_id": item.id, "output_index": index,
                        "content_index": 0, "text": part.text},
                       {"type": "response.content_part.done", "item_id": item.id, "output_index": index,
                        "content_index": 0, "part": part.model_dump()}]
        elif isinstance(item, OutputMessage):
            part = item.content[0]
            events += [{"type": "response.output_text.done", "item_id": item.id, "output_index": index,
                        "content_index": 0, "text": part.text, "logprobs": part.logprobs},
                       {"type": "response.content_part.done", "item_id": item.id, "output_index": index,
                        "content_index": 0, "part": part.model_dump()}]
        elif isinstance(item, OutputFunctionCall):
            events.append({"type": "response.function_call_arguments.done", "item_id": item.id, "output_index": index,
                           "name": item.name, "arguments": item.arguments})
        item.status = status
        events.append({"type": "response.output_item.done", "output_index": index, "item": item.model_dump()})
        return events

    def add(self, chunk: GenerationChunk, logprobs: bool) -> list[dict]:
        events: list[dict] = []
        if not self._answering:  # the tokens before the answer (or a call) starts are the reasoning's
            self._answering = bool(chunk.text or chunk.tool_calls)
            if not self._answering:
                self._before_answer += len(chunk.token_ids)
        if chunk.reasoning:
            if not isinstance(self.open, OutputReasoning):
                events += self._start(OutputReasoning())
            item = self.open
            item.content[0].text += chunk.reasoning
            events.append({"type": "response.reasoning_text.delta", "item_id": item.id, "output_index": self._index,
                           "content_index": 0, "delta": chunk.reasoning})
        if chunk.text:  # (a reasoning token's log-probabilities are not the answer's)
            if not isinstance(self.open, OutputMessage):
                events += self._start(OutputMessage())
            item = self.open
            part = item.content[0]
            part.text += chunk.text
            entries = [lp.model_dump() for lp in chunk.logprobs or []] if logprobs else []
            part.logprobs += entries
            events.append({"type": "response.output_text.delta", "item_id": item.id, "output_index": self._index,
                           "content_index": 0, "delta": chunk.text, "logprobs": entries})
        for delta in chunk.tool_calls or []:
            call = self._calls.get(delta.index)
            if call is None:
                call = self._calls[delta.index] = OutputFunctionCall(
                    call_id=delta.id or item_id("call"), name=delta.function.get("name") or "")
                events += self._start(call)
            arguments = delta.function.get("arguments", "")
            if arguments:
                call.arguments += arguments
                events.append({"type": "response.function_call_arguments.delta", "item_id": call.id,
                               "output_index": self.response.output.index(call), "delta": arguments})
        return events

    def finish(self, finish_reason: str | None, usage: UsageInfo) -> list[dict]:
        """The reply ended: the open item is closed, and the response completed (or incomplete, at its token limit)."""
        incomplete = finish_reason == "length"
        events = self._close("incomplete" if incomplete else "completed")
        r = self.response
        r.status = "incomplete" if incomplete else "completed"
        r.incomplete_details = IncompleteDetails(reason="max_output_tokens") if incomplete else None
        r.usage = ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                                total_tokens=usage.total_tokens)
        if any(isinstance(item, OutputReasoning) for item in r.output):
            r.usage.output_tokens_details.reasoning_tokens = min(self._before_answer, usage.completion_tokens)
        return events


class ResponsesServing:
    """`/v1/responses`: create (plain or streamed), get, delete, and list a response's input items."""

    def __init__(self, serving: OpenAIServing, store: ResponseStore | None):
        self.serving = serving
        self.store = store

    async def _history(self, body: ResponsesRequest, owner: int | None) -> list[BaseModel]:
        """The conversation `previous_response_id` continues: its input items, then its output."""
        if body.previous_response_id is None:
            return []
        if self.store is None:
            raise bad_request("previous_response_id needs stored responses, and this API keeps none (it has no "
                              "database)", "previous_response_id")
        kept = await asyncio.to_thread(self.store.get, body.previous_response_id, owner)
        if kept is None:
            raise APIError(400, f"Previous response with id '{body.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        return [_parse_item(d) for d in kept.input_items + [_as_input_dict(o) for o in kept.response["output"]]]

    async def create(self, body: ResponsesRequest, request: APIRequest) -> ResponseObject | StreamingResponse:
        owner = request.caller.user_id
        history = await self._history(body, owner)
        try:
            chat = body.to_chat_request(history)
        except ValidationError as exc:  # the chat request the input makes is not a valid one
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "input"
            where = ".".join(str(p) for p in err["loc"][:3])
            raise bad_request(f"invalid {_PARAM.get(field, field)}: {where}: {err['msg']}",
                              _PARAM.get(field, field)) from None
        except UnsupportedField as exc:
            raise bad_request(str(exc), _PARAM.get(exc.field, exc.field)) from None
        chat, _sources = await self.serving._with_assistant(chat, request.caller)
        store = bool(body.store) and self.store is not None
        response = ResponseObject.answering(body, store)
        try:
            generation = chat.to_generation_request(response.id)  # the worker's logs name the response
        except UnsupportedField as exc:
            raise bad_request(str(exc), _PARAM.get(exc.field, exc.field)) from None
        generation = generation.model_copy(update={"return_token_ids": True})  # reasoning tokens; a stream left early
        items = [i.model_dump(exclude_none=True) for i in history] + [_with_id(i) for i in body.input_items()]
        builder = OutputBuilder(response)
        logprobs = body.wants_logprobs
        replies = await self.serving._open(request, chat.model, [generation])
        if body.stream:
            return StreamingResponse(self._events(request, chat.model, replies, builder, logprobs, items, owner),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finish, usage = None, UsageInfo()
        first = True
        try:
            async for d in merged_deltas(replies):
                if first and (d.chunk.text or d.chunk.reasoning):
                    self.serving.metrics.observe_ttft(request.endpoint, request.started)
                    first = False
                builder.add(d.chunk, logprobs)
                if d.chunk.finish_reason is not None:
                    finish = d.chunk.finish_reason
                    u = d.chunk.usage
                    usage = UsageInfo(prompt_tokens=u.prompt_tokens if u else 0, completion_tokens=u.completion_tokens
                                      if u else 0, total_tokens=u.total_tokens if u else 0)
        except ClusterError as exc:
            self.serving._record(request, exc.status, chat.model, None)
            raise api_error(exc) from None
        builder.finish(finish, usage)
        self.serving._record(request, 200, chat.model, usage)  # the tokens are charged whatever happens next
        if not await self._keep(response, items, request, chat.model):
            response.store = False
        return response

    async def _keep(self, response: ResponseObject, items: list[dict], request: APIRequest, model: str) -> bool:
        """Store the response (with `store` and a database); whether it is stored. A database that fails here costs
        the client its stored copy, not its answer: the failure is logged."""
        if not response.store or self.store is None:
            return False
        try:
            await asyncio.to_thread(
                self.store.save, response_id=response.id, user_id=request.caller.user_id, key_id=request.caller.key_id,
                model=model, previous_response_id=response.previous_response_id, input_items=items,
                response=response.model_dump(mode="json"))
        except Exception:
            log.exception("response %s could not be stored", response.id)
            return False
        return True

    async def _events(self, request: APIRequest, model: str, replies, builder: OutputBuilder, logprobs: bool,
                      items: list[dict], owner: int | None) -> AsyncIterator[bytes]:
        sequence = 0

        def event(data: dict) -> bytes:
            nonlocal sequence
            data = data | {"sequence_number": sequence}
            sequence += 1
            return f"event: {data['type']}\ndata: {_json(data)}\n\n".encode()

        response = builder.response
        status: int = 200
        usage = UsageInfo()
        generated = 0
        finished = False
        first = True
        try:
            yield event({"type": "response.created", "response": response.model_dump(mode="json")})
            yield event({"type": "response.in_progress", "response": response.model_dump(mode="json")})
            finish = None
            async for d in merged_deltas(replies):
                c = d.chunk
                if first and (c.text or c.reasoning):
                    self.serving.metrics.observe_ttft(request.endpoint, request.started)
                    first = False
                generated += len(c.token_ids)
                for e in builder.add(c, logprobs):
                    yield event(e)
                if c.finish_reason is not None:
                    finish = c.finish_reason
                    if c.usage is not None:
                        usage = UsageInfo(prompt_tokens=c.usage.prompt_tokens,
                                          completion_tokens=c.usage.completion_tokens,
                                          total_tokens=c.usage.total_tokens)
            for e in builder.finish(finish, usage):
                yield event(e)
            finished = True
            if not await self._keep(response, items, request, model):
                response.store = False
            kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
            yield event({"type": kind, "response": response.model_dump(mode="json")})
        except ClusterError as exc:
            status = exc.status
            yield event({"type": "error", "code": exc.code or exc.type, "message": exc.message, "param": exc.param})
            response.status = "failed"
            response.error = ResponseError(code=exc.code or "server_error", message=exc.message)
            yield event({"type": "response.failed", "response": response.model_dump(mode="json")})
        except Exception as exc:  # never a silently truncated stream
            log.exception("response stream failed")
            status = 500
            message = f"internal server error: {type(exc).__name__}"
            yield event({"type": "error", "code": "server_error", "message": message, "param": None})
            response.status = "failed"
            response.error = ResponseError(code="server_error", message=message)
            yield event({"type": "response.failed", "response": response.model_dump(mode="json")})
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away mid-stream
            raise
        finally:
            if not finished:
                usage.add(0, generated)  # what was streamed before the end (its prompt's tokens are not known)
            self.serving._record(request, status, model, usage)

    async def _kept(self, response_id: str, caller: Caller) -> Kept:
        """A stored response of the caller's user, made with a model the caller's key may use; else a 404."""
        kept = await asyncio.to_thread(self.store.get, response_id, caller.user_id) if self.store is not None else None
        if kept is None or not caller.may_use(kept.model):
            raise not_found(response_id)
        return kept

    async def get(self, response_id: str, caller: Caller) -> ResponseObject:
        return ResponseObject.model_validate((await self._kept(response_id, caller)).response)

    async def delete(self, response_id: str, caller: Caller) -> DeletedResponse:
        await self._kept(response_id, caller)
        if not await asyncio.to_thread(self.store.delete, response_id, caller.user_id):
            raise not_found(response_id)
        return DeletedResponse(id=response_id)

    async def input_items(self, response_id: str, caller: Caller, order: str, limit: int, after: str | None,
                          before: str | None) -> InputItemList:
        """A page of the items the response answered, in `order`, after (or before) the item of that id."""
        data = (await self._kept(response_id, caller)).input_items
        data = data[::-1] if order == "desc" else list(data)
        ids = [d.get("id") for d in data]
        for cursor, param in ((after, "after"), (before, "before")):
            if cursor is not None and cursor not in ids:
                raise bad_request(f"no input item with id '{cursor}' in response '{response_id}'", param)
        start = ids.index(after) + 1 if after is not None else 0
        end = ids.index(before) if before is not None else len(data)
        data = data[start:end]
        shown = data[:limit]
        return InputItemList(data=shown, first_id=shown[0].get("id") if shown else None,
                             last_id=shown[-1].get("id") if shown else None, has_more=len(data) > limit)


def _json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def _with_id(item: BaseModel) -> dict:
    """An input item as kept: with an id (OpenAI gives every input item one), its type, and a message's content as
    parts."""
    data = item.model_dump(exclude_none=True, by_alias=True)
    data.setdefault("type", "message")
    if data["type"] == "message" and isinstance(data.get("content"), str):  # as OpenAI lists it: content parts
        kind = "output_text" if data.get("role") == "assistant" else "input_text"
        data["content"] = [{"type": kind, "text": data["content"]}]
    if not data.get("id"):
        data["id"] = item_id(_ITEM_PREFIX.get(data["type"], "item"))
    return data


def _as_input_dict(output: dict) -> dict:
    if output.get("type") == "message":
        return output | {"content": [{"type": "output_text", "text": c.get("text", "")} for c in output["content"]]}
    return output


_ITEM_TYPES: dict[str, type[BaseModel]] = {"message": MessageItem, "function_call": FunctionCallItem,
                                           "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}


def _parse_item(data: dict) -> InputItem:
    kind = data.get("type", "message")
    model = _ITEM_TYPES[kind]
    fields = set(model.model_fields)
    return model.model_validate({k: v for k, v in data.items() if k in fields})
