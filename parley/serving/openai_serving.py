"""Serving OpenAI's chat, completions and embeddings over the cluster: what the API's routes call.

Each OpenAI request becomes parley's GenerationRequest by the request type's own method (one
defaults table, parley.engines.base.SamplingParams), goes to the cluster client unchanged, and
the deltas that come back are rendered as OpenAI's typed responses or stream chunks. The cluster
client's errors become the API's one error type here. Each request is an `APIRequest`, which says who
asks and becomes one usage event when the reply ends, with the tokens the reply reported.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from parley.engines.base import GenerationRequest, TokenLogprob, ToolCallsSoFar
from parley.serving.api_errors import APIError, bad_request
from parley.serving.assistant_requests import AssistantRequests, is_assistant_id
from parley.serving.cluster_client import Cluster
from parley.serving.cluster_errors import ClusterError
from parley.serving.key_auth import Caller, model_not_found
from parley.serving.metrics import ServerMetrics
from parley.serving.openai_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FunctionCall,
    ModelCard,
    SourceOut,
    ToolCall,
    UnsupportedField,
    UsageInfo,
    new_id,
    seeds,
    with_seed,
)
from parley.serving.replies import Delta, Reply, merged_deltas, start_replies
from parley.store.usage import UsageEvent, UsageRecorder

log = logging.getLogger("parley.api")

EMBEDDING_BATCH = 32  # texts per worker request


def api_error(exc: ClusterError) -> APIError:
    return APIError(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param)


def sse(data: BaseModel | dict | str, exclude: set[str] | None = None) -> bytes:
    if isinstance(data, BaseModel):
        data = data.model_dump_json(exclude=exclude)
    elif isinstance(data, dict):
        data = json.dumps(data)
    return f"data: {data}\n\n".encode()


def encode_embedding(vector: list[float], fmt: str, dimensions: int | None) -> list[float] | str:
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vector = [x / norm for x in vector]
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class APIRequest:
    """One request to a model: who asks, the endpoint, the model as asked (an assistant's id or a model's name) and
    when it began. It becomes one usage event when it ends: `finish` is called once, by the serving code when the
    reply ends (with the tokens the reply reported; for a stream, those of its final chunks, whether or not the
    client asked for them) or by the route when the request fails first."""

    def __init__(self, caller: Caller, endpoint: str, model: str, recorder: UsageRecorder | None = None):
        self.caller = caller
        self.endpoint = endpoint
        self.model = model
        self.started = time.perf_counter()
        self._recorder = recorder
        self.finished = False

    def finish(self, status: int | str, usage: UsageInfo | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if self._recorder is None:
            return
        c, usage = self.caller, usage or UsageInfo()
        self._recorder.record(UsageEvent(
            source="api", endpoint=self.endpoint, model=self.model, status=int(status),
            latency_ms=(time.perf_counter() - self.started) * 1000, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, user_id=c.user_id, key_id=c.key_id, charge=list(c.scopes)))

    def fail(self, exc: BaseException) -> None:
        """The request ended in `exc` before its reply did: recorded with the status the client got."""
        if isinstance(exc, APIError):
            status = exc.status
        elif isinstance(exc, UnsupportedField):
            status = 400
        elif isinstance(exc, asyncio.CancelledError):
            status = 499  # the client went away
        else:
            status = 500
        self.finish(status)


class Choice:
    """One choice's reply, added up from its deltas (non-streaming)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.calls = ToolCallsSoFar()
        self.last: Delta | None = None

    def add(self, d: Delta) -> None:
        c = d.chunk
        self.text.append(c.text)
        self.reasoning.append(c.reasoning)
        self.logprobs += c.logprobs or []
        self.calls.add(c.tool_calls)
        if c.finish_reason is not None:
            self.last = d


class OpenAIServing:
    """The API's work, apart from its routes: requests in, OpenAI's responses out."""

    def __init__(self, cluster: Cluster, metrics: ServerMetrics, assistants: AssistantRequests | None = None):
        self.cluster = cluster
        self.metrics = metrics
        self.assistants = assistants

    async def model_names(self) -> list[str]:
        try:
            return await self.cluster.list_models()
        except ClusterError as exc:
            raise api_error(exc) from None

    async def model_cards(self, caller: Caller) -> list[ModelCard]:
        """The served models, then the assistants, that the caller may use."""
        cards = [ModelCard(id=m) for m in await self.model_names()]
        if self.assistants is not None and caller.user is not None:
            cards += await self.assistants.cards(caller.user)
        return [c for c in cards if caller.may_use(c.id)]

    async def model_card(self, model_id: str, caller: Caller) -> ModelCard:
        if not caller.may_use(model_id):
            raise model_not_found(model_id)
        if self.assistants is not None and caller.user is not None and is_assistant_id(model_id):
            a = await self.assistants.get(model_id, caller.user)
            return ModelCard(id=a.id, owned_by=a.owner, name=a.name, description=a.description,
                             base_model=a.base_model)
        if model_id not in await self.model_names():
            raise model_not_found(model_id)
        return ModelCard(id=model_id)

    async def _with_assistant(self, body: ChatCompletionRequest, caller: Caller
                              ) -> tuple[ChatCompletionRequest, list[SourceOut] | None]:
        """A request to an assistant, as its base model gets it, and the sources it cites (None: no assistant)."""
        if self.assistants is None or caller.user is None or not is_assistant_id(body.model):
            return body, None
        try:
            body, sources = await self.assistants.apply(body, caller.user)
        except ClusterError as exc:  # the embedding model could not be reached
            raise api_error(exc) from None
        if sources is None:
            return body, None
        return body, [SourceOut(**s.model_dump(include=set(SourceOut.model_fields))) for s in sources]

    # -- the shared path -----------------------------------------------------------------

    def _record(self, request: APIRequest, status: int | str, model: str, usage: UsageInfo | None) -> None:
        """A reply's end: the metrics (tokens by the model that made them) and the request's usage event."""
        self.metrics.observe_request(request.endpoint, status, request.started)
        if status != 200:
            self.metrics.observe_error(request.endpoint, status)
        if usage is not None:
            self.metrics.observe_tokens(model, usage.prompt_tokens, usage.completion_tokens)
        request.finish(status, usage)

    async def _open(self, request: APIRequest, model: str, requests: list[GenerationRequest]) -> list[Reply]:
        replies = [Reply(i, self.cluster.generate_stream(model, r)) for i, r in enumerate(requests)]
        try:
            await start_replies(replies)
        except ClusterError as exc:
            self._record(request, exc.status, model, None)
            raise api_error(exc) from None
        return replies

    @staticmethod
    def _usage(finals: dict[int, Delta], prompt_groups: list[int]) -> UsageInfo:
        """Prompt tokens are counted once per prompt: `prompt_groups[i]` is the prompt choice i answers."""
        usage = UsageInfo()
        counted: set[int] = set()
        for i, d in finals.items():
            u = d.chunk.usage
            group = prompt_groups[i]
            usage.add(0 if group in counted or u is None else u.prompt_tokens, u.completion_tokens if u else 0)
            counted.add(group)
        return usage

    async def _run(self, request: APIRequest, model: str, requests: list[GenerationRequest], prompt_groups: list[int]
                   ) -> tuple[list[Choice], UsageInfo]:
        """Non-streaming: every choice to its end."""
        replies = await self._open(request, model, requests)
        choices = [Choice() for _ in replies]
        first = True
        try:
            async for d in merged_deltas(replies):
                if (d.chunk.text or d.chunk.reasoning) and first:
                    self.metrics.observe_ttft(request.endpoint, request.started)
                    first = False
                choices[d.index].add(d)
        except ClusterError as exc:
            self._record(request, exc.status, model, None)
            raise api_error(exc) from None
        usage = self._usage({i: c.last for i, c in enumerate(choices)}, prompt_groups)
        self._record(request, 200, model, usage)
        return choices, usage

    async def _stream(self, request: APIRequest, model: str, requests: list[GenerationRequest],
                      prompt_groups: list[int], prelude: list[BaseModel], render: Callable[[Delta], list[BaseModel]],
                      usage_event: Callable[[UsageInfo], BaseModel], include_usage: bool) -> StreamingResponse:
        """With `include_usage` every event has a `usage` key (null until the last event, `usage_event`), as OpenAI
        sends them; without, no event has one (the usage recorded is the same either way)."""
        # With each delta's token ids, so that a stream the client leaves early is charged what it generated.
        requests = [r.model_copy(update={"return_token_ids": True}) for r in requests]
        replies = await self._open(request, model, requests)
        exclude = None if include_usage else {"usage"}

        async def events() -> AsyncIterator[bytes]:
            finals: dict[int, Delta] = {}
            generated = [0] * len(requests)  # tokens streamed so far, per choice
            status: int | str = 200
            first = True
            try:
                for event in prelude:
                    yield sse(event, exclude)
                async for d in merged_deltas(replies):
                    if (d.chunk.text or d.chunk.reasoning) and first:
                        self.metrics.observe_ttft(request.endpoint, request.started)
                        first = False
                    generated[d.index] += len(d.chunk.token_ids)
                    if d.chunk.finish_reason is not None:
                        finals[d.index] = d
                    for event in render(d):
                        yield sse(event, exclude)
                if include_usage:
                    yield sse(usage_event(self._usage(finals, prompt_groups)))
            except ClusterError as exc:
                status = exc.status
                yield sse(api_error(exc).body())
            except Exception as exc:  # never a silently truncated stream
                log.exception("reply stream failed")
                status = 500
                yield sse(APIError(500, f"internal server error: {type(exc).__name__}", type="server_error").body())
            except (asyncio.CancelledError, GeneratorExit):
                status = 499  # the client went away mid-stream
                raise
            finally:
                usage = self._usage(finals, prompt_groups)
                # Choices the client left before their end: the tokens they streamed (their prompt's are not known).
                usage.add(0, sum(n for i, n in enumerate(generated) if i not in finals))
                self._record(request, status, model, usage)
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- chat ----------------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, request: APIRequest) -> ChatCompletion | StreamingResponse:
        cid, created = new_id("chatcmpl"), int(time.time())
        asked = body.model  # an assistant's id, or a model's name: what the reply names
        body, sources = await self._with_assistant(body, request.caller)
        generation = body.to_generation_request(cid)  # an UnsupportedField is the API's 400 (api_errors)
        n = body.n or 1
        requests = [with_seed(generation, s) for s in seeds(body.seed, n)]
        head = {"id": cid, "created": created, "model": asked}
        if body.stream:
            def chunk(choice: ChatChunkChoice) -> ChatCompletionChunk:
                return ChatCompletionChunk(**head, choices=[choice])

            def render(d: Delta) -> list[BaseModel]:
                c, events = d.chunk, []
                if c.reasoning:
                    events.append(chunk(ChatChunkChoice(index=d.index, delta=ChatDelta(reasoning_content=c.reasoning))))
                if c.text or (c.logprobs and not c.reasoning):  # (a reasoning token's are not the answer's)
                    events.append(chunk(ChatChunkChoice(index=d.index, delta=ChatDelta(content=c.text), logprobs=ChatLogprobs(
                        content=c.logprobs) if c.logprobs else None)))
                if c.tool_calls:
                    calls = [ToolCall(index=t.index, id=t.id, type=t.type, function=FunctionCall(**t.function))
                             for t in c.tool_calls]
                    events.append(chunk(ChatChunkChoice(index=d.index, delta=ChatDelta(tool_calls=calls))))
                if c.finish_reason is not None:
                    events.append(chunk(ChatChunkChoice(index=d.index, delta=ChatDelta(),
                                                        finish_reason=c.finish_reason)))
                return events

            prelude = [chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))) for i in range(n)]
            if sources is not None:  # the first event says what the reply may cite
                prelude[0].sources = sources
            return await self._stream(request, body.model, requests, [0] * n, prelude, render,
                                      lambda usage: ChatCompletionChunk(**head, choices=[], usage=usage),
                                      body.include_usage)
        choices, usage = await self._run(request, body.model, requests, [0] * n)
        out = []
        for i, c in enumerate(choices):
            text = "".join(c.text)
            calls = [ToolCall.model_validate(call) for call in c.calls.calls()] or None
            message = AssistantMessage(content=(text or None) if calls else text, tool_calls=calls,
                                       reasoning_content="".join(c.reasoning) or None)
            out.append(ChatChoice(index=i, message=message, finish_reason=c.last.chunk.finish_reason,
                                  logprobs=ChatLogprobs(content=c.logprobs) if generation.params.logprobs is not None
                                  else None))
        return ChatCompletion(**head, choices=out, usage=usage, sources=sources)

    # -- completions ---------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, request: APIRequest) -> Completion | StreamingResponse:
        cid, created = new_id("cmpl"), int(time.time())
        per_prompt = body.to_generation_requests(cid)
        n = body.n or 1
        requests, groups = [], []
        for p_index, generation in enumerate(per_prompt):
            requests += [with_seed(generation, s) for s in seeds(body.seed, n)]
            groups += [p_index] * n
        head = {"id": cid, "created": created, "model": body.model}
        # With echo and logprobs the first entry of each choice is its prompt's first token's: null, as OpenAI's.
        prompt_first = per_prompt[0].prompt_logprobs is not None
        if body.stream:
            offsets: dict[int, int] = {}  # per choice: how far into its text the log-probabilities so far reach

            def render(d: Delta) -> list[BaseModel]:
                c = d.chunk
                if not c.text and c.finish_reason is None and not c.logprobs:
                    return []
                logprobs = None
                if c.logprobs:
                    logprobs = CompletionLogprobs.of(c.logprobs, prompt_first and d.index not in offsets,
                                                     offsets.get(d.index, 0))
                    offsets[d.index] = offsets.get(d.index, 0) + logprobs.text_length
                return [Completion(**head, choices=[CompletionChoice(
                    index=d.index, text=c.text, finish_reason=c.finish_reason, logprobs=logprobs)])]

            return await self._stream(request, body.model, requests, groups, [], render,
                                      lambda usage: Completion(**head, choices=[], usage=usage), body.include_usage)
        choices, usage = await self._run(request, body.model, requests, groups)
        return Completion(**head, usage=usage, choices=[CompletionChoice(
            index=i, text="".join(c.text), finish_reason=c.last.chunk.finish_reason,
            logprobs=CompletionLogprobs.of(c.logprobs, prompt_first) if body.logprobs is not None else None)
            for i, c in enumerate(choices)])

    # -- embeddings ----------------------------------------------------------------------

    async def embeddings(self, body: EmbeddingRequest, request: APIRequest) -> EmbeddingList:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise bad_request("input must be a string or a list of strings (token-id input is not supported)", "input")
        if any(not t for t in texts):
            raise bad_request("input must not contain empty strings", "input")
        data, tokens = [], 0
        request_id = new_id("embd")
        for start in range(0, len(texts), EMBEDDING_BATCH):
            try:
                result = await self.cluster.embed(body.model, texts[start:start + EMBEDDING_BATCH], request_id)
            except ClusterError as exc:
                raise api_error(exc) from None
            tokens += int(result.get("token_num", 0))
            for offset, vector in enumerate(result["embedding"]):
                data.append(Embedding(index=start + offset,
                                      embedding=encode_embedding(vector, body.encoding_format, body.dimensions)))
        self.metrics.observe_tokens(body.model, tokens, 0)
        request.finish(200, UsageInfo(prompt_tokens=tokens, total_tokens=tokens))
        return EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
