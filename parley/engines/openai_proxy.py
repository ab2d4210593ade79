"""`openai`: an engine that forwards to any OpenAI-compatible server.

This is how parley serves models running in vLLM, SGLang, TGI, Ollama, llama-server or a
hosted API without importing those engines: only the HTTP protocol is shared, so a new
release upstream cannot break the worker. It implements the engine seam like any other engine:
a request with messages goes to the upstream's chat completions as it came (tools, tool_choice,
response_format, logprobs, penalties, seed, stop, min_p), a prompt to its completions, and the
upstream's stream comes back as the same deltas a local engine yields (text, tool-call deltas,
log-probabilities, usage). One worker can front several upstream models at once through an
endpoint file (`--api-endpoint-file`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.engines.base import (
    EmbeddingResult,
    Engine,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from parley.engines.engine_options import OpenAIProxyOptions
from parley.errors import InvalidRequestError, ParleyError
from parley.models.source import ModelSource
from parley.openai_env import environment_key_for
from parley.secret_files import read_secret

UNKNOWN_CONTEXT = 1_000_000  # the upstream enforces its own window


class Upstream(BaseModel):
    """One upstream model (an entry of the endpoint file)."""

    model_config = ConfigDict(extra="forbid")

    api_base: str
    api_key: str | None = None
    model_name: str | None = None  # the name upstream; default: the name served here
    context_length: int = Field(UNKNOWN_CONTEXT, ge=1)


def load_endpoint_file(path: str | Path) -> dict[str, Upstream]:
    """`{"served-name": {"api_base": ..., "api_key": ..., "model_name": ...}, ...}` (FastChat's keys)."""
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict) or not raw:
            raise ValueError("it must be a non-empty JSON object of model name -> endpoint")
        return {name: Upstream.model_validate(spec) for name, spec in raw.items()}
    except FileNotFoundError:
        raise ParleyError(f"endpoint file {path} does not exist") from None
    except (ValueError, ValidationError) as exc:
        raise ParleyError(f"endpoint file {path} is invalid: {exc}") from None


class UpstreamError(ParleyError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _as_error(exc: openai.APIError) -> Exception:
    status = getattr(exc, "status_code", None) or 502
    body = getattr(exc, "body", None)
    message = (body.get("message") if isinstance(body, dict) else None) or str(exc)
    if status in (400, 404, 422):
        return InvalidRequestError(f"upstream: {message}")
    return UpstreamError(status, f"upstream ({status}): {message}")


def _chat_logprobs(choice) -> list[TokenLogprob]:
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    return [TokenLogprob.model_validate(e.model_dump()) for e in content or []]


def _reasoning(delta) -> str:
    """A reasoning model's thinking in an upstream's delta: `reasoning_content` (DeepSeek's, vLLM's, parley's) or
    `reasoning` (vLLM's newer name, Ollama's, OpenRouter's)."""
    extra = delta.model_extra or {}
    value = extra.get("reasoning_content") or extra.get("reasoning")
    return value if isinstance(value, str) else ""


def _completion_logprobs(choice) -> list[TokenLogprob]:
    lp = choice.logprobs
    if not lp or not lp.tokens:
        return []
    tops = lp.top_logprobs or [{}] * len(lp.tokens)
    return [TokenLogprob(token=t, logprob=v if v is not None else 0.0, bytes=list(t.encode()),
                         top_logprobs=[{"token": k, "logprob": x, "bytes": list(k.encode())}
                                       for k, x in sorted((top or {}).items(), key=lambda kv: -kv[1])])
            for t, v, top in zip(lp.tokens, lp.token_logprobs or [0.0] * len(lp.tokens), tops)]


class OpenAIProxyEngine(Engine):
    """Forwards each request to the upstream that serves its model name."""

    name = "openai"
    takes_model_path = False

    def __init__(self, upstreams: dict[str, Upstream]):
        if not upstreams:
            raise ParleyError("the openai engine needs an upstream: --upstream-base-url or --api-endpoint-file")
        self.upstreams = upstreams
        self._clients = {name: openai.AsyncOpenAI(base_url=u.api_base, api_key=u.api_key or "none", max_retries=1,
                                                  timeout=600) for name, u in upstreams.items()}
        first = next(iter(upstreams))
        self._info = ModelInfo(name=first, engine=self.name, context_length=upstreams[first].context_length,
                               device="remote", dtype="remote")

    @classmethod
    def create(cls, source: ModelSource | None, options: OpenAIProxyOptions) -> OpenAIProxyEngine:
        """From `--api-endpoint-file`, or `--upstream-base-url` with `--upstream-model` (or the served name)."""
        if options.api_endpoint_file:
            return cls(load_endpoint_file(options.api_endpoint_file))
        if not options.upstream_base_url:
            raise ParleyError("--engine openai needs --upstream-base-url or --api-endpoint-file")
        name = options.model_name or options.upstream_model
        if not name:
            raise ParleyError("--engine openai needs --upstream-model or --model-names")
        key = options.upstream_api_key or read_secret(options.upstream_api_key_file, "PARLEY_UPSTREAM_API_KEY",
                                                      "upstream API key") or environment_key_for(options.upstream_base_url)
        return cls({name: Upstream(api_base=options.upstream_base_url, model_name=options.upstream_model or name,
                                   api_key=key)})

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def _route(self, model: str | None) -> tuple[openai.AsyncOpenAI, str]:
        name = model if model in self.upstreams else next(iter(self.upstreams))
        return self._clients[name], self.upstreams[name].model_name or name

    # -- the engine seam ---------------------------------------------------------------------

    @staticmethod
    def _upstream_request(request: GenerationRequest, upstream_model: str) -> tuple[dict, dict]:
        """The upstream request's fields and its `extra_body` (vLLM's and FastChat's sampling extensions)."""
        p = request.params
        common = {"model": upstream_model, "stream": True, "stream_options": {"include_usage": True},
                  "temperature": p.temperature, "top_p": p.top_p}
        for key in ("seed", "presence_penalty", "frequency_penalty"):
            if getattr(p, key):
                common[key] = getattr(p, key)
        if p.stop:
            common["stop"] = p.stop
        if p.max_new_tokens is not None:  # 0 too: with echo and logprobs, the prompt's log-probabilities only
            common["max_tokens"] = p.max_new_tokens
        extra = {k: getattr(p, k) for k, off in (("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0),
                                                  ("ignore_eos", False), ("stop_token_ids", [])) if getattr(p, k) != off}
        if request.continue_final_message:  # vLLM's name for it; an upstream without it refuses the request
            extra["continue_final_message"], extra["add_generation_prompt"] = True, False
        if p.guided is not None:
            raise InvalidRequestError("the openai engine forwards response_format and tools, not a grammar")
        if request.messages is not None:
            common["messages"] = [m.model_dump(exclude_none=True) for m in request.messages]
            if p.logprobs is not None:
                common["logprobs"] = True
                if p.logprobs:
                    common["top_logprobs"] = p.logprobs
            for key in ("response_format", "tools", "tool_choice", "reasoning_effort"):
                if getattr(request, key) is not None:
                    common[key] = getattr(request, key)
        else:
            # Token ids go as they are (OpenAI's completions take them); with echo and logprobs the upstream answers
            # with the prompt's log-probabilities first, its first null read as 0.0 (GenerationRequest.prompt_logprobs).
            prompt = request.prompt if request.prompt is not None else request.prompt_token_ids
            common |= {"prompt": prompt, "echo": request.echo}
            if p.logprobs is not None:
                common["logprobs"] = p.logprobs
        return common, extra

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        client, upstream_model = self._route(request.model)
        body, extra = self._upstream_request(request, upstream_model)
        try:
            if "messages" in body:
                stream = await client.chat.completions.create(**body, extra_body=extra or None)
                async for chunk in self._chat_chunks(stream):
                    yield chunk
            else:
                stream = await client.completions.create(**body, extra_body=extra or None)
                async for chunk in self._completion_chunks(stream):
                    yield chunk
        except openai.APIStatusError as exc:
            raise _as_error(exc) from None
        except openai.APIConnectionError as exc:
            raise UpstreamError(502, f"upstream unreachable: {exc}") from None

    @staticmethod
    def _last(finish: str | None, usage) -> GenerationChunk:
        finish = finish if finish in ("stop", "length", "tool_calls") else "stop"
        return GenerationChunk(finish_reason=finish, usage=Usage(
            prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0))

    @classmethod
    async def _chat_chunks(cls, stream) -> AsyncIterator[GenerationChunk]:
        finish, usage = None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta
                calls = [ToolCallDelta(index=d.index, id=d.id, type="function" if d.id else None,
                                       function={k: v for k, v in (d.function.model_dump() if d.function else {}).items()
                                                 if v is not None})
                         for d in delta.tool_calls or []]
                logprobs = _chat_logprobs(choice)
                reasoning = _reasoning(delta)
                finish = choice.finish_reason or finish
                if delta.content or reasoning or calls or logprobs:
                    yield GenerationChunk(text=delta.content or "", reasoning=reasoning, tool_calls=calls or None,
                                          logprobs=logprobs or None)
        yield cls._last(finish, usage)

    @classmethod
    async def _completion_chunks(cls, stream) -> AsyncIterator[GenerationChunk]:
        finish, usage = None, None
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                logprobs = _completion_logprobs(choice)
                if choice.text or logprobs:
                    yield GenerationChunk(text=choice.text or "", logprobs=logprobs or None)
        yield cls._last(finish, usage)

    async def count_tokens(self, text: str, add_special_tokens: bool = True) -> int:
        """An estimate (about four characters a token): the upstream has the tokenizer."""
        return max(1, len(text) // 4)

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        client, upstream_model = self._route(None)
        try:
            result = await client.embeddings.create(model=upstream_model, input=texts)
        except openai.APIStatusError as exc:
            raise _as_error(exc) from None
        return EmbeddingResult(embeddings=[d.embedding for d in result.data], prompt_tokens=result.usage.prompt_tokens)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
