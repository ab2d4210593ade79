"""`openai`: an engine that forwards to any OpenAI-compatible server.

This is how parley serves models running in vLLM, SGLang, TGI, Ollama, llama-server or a
hosted API without importing those engines: only the HTTP protocol is shared, so a new
release upstream cannot break the worker. Chat requests are forwarded as they came
(messages, tools, tool_choice, response_format, logprobs, penalties, seed, stop), and the
upstream's stream comes back as worker chunks: cumulative text and tool calls, per-token
log-probabilities, usage. One worker can front several upstream models at once through an
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
    EngineOptions,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    Usage,
)
from parley.errors import InvalidRequestError, ParleyError
from parley.models.source import ModelSource

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


def _chat_logprobs(choice) -> list[dict]:
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    return [TokenLogprob.model_validate(e.model_dump()).model_dump() for e in content or []]


def _completion_logprobs(choice) -> list[dict]:
    lp = choice.logprobs
    if not lp or not lp.tokens:
        return []
    tops = lp.top_logprobs or [{}] * len(lp.tokens)
    return [{"token": t, "logprob": v if v is not None else 0.0, "bytes": list(t.encode()),
             "top_logprobs": [{"token": k, "logprob": x, "bytes": list(k.encode())}
                              for k, x in sorted((top or {}).items(), key=lambda kv: -kv[1])]}
            for t, v, top in zip(lp.tokens, lp.token_logprobs or [0.0] * len(lp.tokens), tops)]


class OpenAIProxyEngine(Engine):
    """Forwards each request to the upstream that serves its model name."""

    name = "openai"
    features = frozenset({"logprobs", "penalties", "guided", "forwarding"})

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
    def create(cls, source: ModelSource, options: EngineOptions) -> OpenAIProxyEngine:
        raise ParleyError("the openai engine is configured with --upstream-base-url (and --upstream-model, "
                          "--upstream-api-key) or --api-endpoint-file, not --model-path")

    @property
    def model_info(self) -> ModelInfo:
        return self._info

    def _route(self, model: str | None) -> tuple[openai.AsyncOpenAI, str]:
        name = model if model in self.upstreams else next(iter(self.upstreams))
        return self._clients[name], self.upstreams[name].model_name or name

    # -- the worker's path: whole requests, forwarded ---------------------------------------

    async def forward(self, params: dict) -> AsyncIterator[dict]:
        """Forward one worker request; yields worker-chunk fields (cumulative `text` and
        `tool_calls`, `token_logprobs` of the new tokens, `finish_reason` and `usage` at the end)."""
        client, upstream_model = self._route(params.get("model"))
        common = {"model": upstream_model, "stream": True, "stream_options": {"include_usage": True}}
        for key in ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty"):
            if params.get(key) is not None:
                common[key] = params[key]
        if params.get("max_new_tokens"):
            common["max_tokens"] = params["max_new_tokens"]
        extra = {k: params[k] for k in ("top_k", "repetition_penalty", "ignore_eos", "stop_token_ids")
                 if params.get(k) not in (None, -1, 1.0, False, [])}
        try:
            if params.get("messages") is not None:
                request = dict(common, messages=params["messages"])
                if params.get("logprobs") is not None:
                    request["logprobs"] = True
                    if params["logprobs"]:
                        request["top_logprobs"] = params["logprobs"]
                for key in ("response_format", "tools", "tool_choice"):
                    if params.get(key) is not None:
                        request[key] = params[key]
                stream = await client.chat.completions.create(**request, extra_body=extra or None)
                async for out in self._chat_chunks(stream):
                    yield out
            else:
                request = dict(common, prompt=params.get("prompt") or "", echo=bool(params.get("echo")))
                if params.get("logprobs") is not None:
                    request["logprobs"] = params["logprobs"]
                stream = await client.completions.create(**request, extra_body=extra or None)
                async for out in self._completion_chunks(stream):
                    yield out
        except openai.APIStatusError as exc:
            raise _as_error(exc) from None
        except openai.APIConnectionError as exc:
            raise UpstreamError(502, f"upstream unreachable: {exc}") from None

    @staticmethod
    async def _chat_chunks(stream) -> AsyncIterator[dict]:
        text, calls, finish, usage = "", [], None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
            for choice in chunk.choices:
                delta = choice.delta
                changed = bool(delta.content)
                text += delta.content or ""
                for d in delta.tool_calls or []:
                    while len(calls) <= d.index:
                        calls.append({"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
                    call = calls[d.index]
                    call["id"] = d.id or call["id"]
                    if d.function:
                        call["function"]["name"] = d.function.name or call["function"]["name"]
                        call["function"]["arguments"] += d.function.arguments or ""
                    changed = True
                logprobs = _chat_logprobs(choice)
                finish = choice.finish_reason or finish
                if changed or logprobs:
                    yield {"text": text, "tool_calls": [dict(c) for c in calls] or None, "token_logprobs": logprobs or None}
        yield {"text": text, "tool_calls": calls or None, "finish_reason": finish or "stop",
               "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    @staticmethod
    async def _completion_chunks(stream) -> AsyncIterator[dict]:
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
            for choice in chunk.choices:
                text += choice.text or ""
                finish = choice.finish_reason or finish
                logprobs = _completion_logprobs(choice)
                if choice.text or logprobs:
                    yield {"text": text, "token_logprobs": logprobs or None}
        yield {"text": text, "finish_reason": finish or "stop",
               "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    # -- the engine seam (prompt in, text out), for `parley chat` and direct use --------------

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if request.prompt is None:
            raise InvalidRequestError("the openai engine forwards text prompts, not token ids")
        p = request.params
        seen = ""
        async for out in self.forward({"prompt": request.prompt, "temperature": p.temperature, "top_p": p.top_p,
                                       "max_new_tokens": p.max_new_tokens, "stop": p.stop or None, "seed": p.seed}):
            new, seen = out["text"][len(seen):], out["text"]
            if out.get("finish_reason"):
                u = out["usage"]
                yield GenerationChunk(text=new, finish_reason="length" if out["finish_reason"] == "length" else "stop",
                                      usage=Usage(prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"]))
            elif new:
                yield GenerationChunk(text=new)

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
