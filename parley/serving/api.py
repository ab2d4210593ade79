"""The OpenAI-compatible API server: /v1/models, chat, completions, embeddings, over the controller."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import secrets
import struct
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from parley.serving.api_errors import APIError, bad_request, install_error_handlers
from parley.serving.cluster_auth import auth_headers
from parley.serving.gateway import WorkerGateway
from parley.serving.metrics import ServerMetrics, install_metrics
from parley.serving.openai_schemas import (
    MAX_CHOICES,
    SEED_MAX,
    SEED_MIN,
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    UsageInfo,
    new_id,
)
from parley.serving.replies import Delta, Reply, merged_deltas, start_replies
from parley.serving.request_limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SEND_TIMEOUT_S,
    BodySizeLimit,
    SendTimeout,
)

log = logging.getLogger("parley.api")

EMBEDDING_BATCH = 32  # texts per worker request


class APISettings(BaseModel):
    controller_address: str = "http://127.0.0.1:21001"
    api_keys: list[str] = Field(default_factory=list)  # empty: no key needed
    allowed_origins: list[str] = Field(default_factory=list)  # CORS; empty: same-origin only
    worker_timeout_s: float = Field(120.0, gt=0)  # longest silence from a worker mid-reply
    cluster_secret: str | None = None  # sent to the controller and workers
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)  # a bigger request body is a 413
    send_timeout_s: float = Field(DEFAULT_SEND_TIMEOUT_S, gt=0)  # a client that reads nothing this long is dropped


# -- request translation -----------------------------------------------------------------------


def chat_messages(messages: list[ChatMessageIn]) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if m.role == "function":
            raise bad_request("the 'function' role is deprecated; use tool messages", f"messages[{i}].role")
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise bad_request("only text content parts are supported", f"messages[{i}].content")
            content = "".join(p.text or "" for p in m.content)
        else:
            content = m.content or ""
        message = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.tool_calls:
            message["tool_calls"] = m.tool_calls
        if m.role == "tool":
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def logprob_count(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """Chat's `logprobs`/`top_logprobs` as the worker's count (None: none)."""
    if top_logprobs is not None and not logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    return (top_logprobs or 0) if logprobs else None


def completion_logprobs(entries: list[dict]) -> dict:
    """The legacy completions shape of log-probabilities."""
    offsets, position = [], 0
    for e in entries:
        offsets.append(position)
        position += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def merge_tool_calls(deltas: list[dict]) -> list[dict]:
    calls: dict[int, dict] = {}
    for d in deltas:
        call = calls.setdefault(d["index"], {"id": d.get("id"), "type": "function",
                                             "function": {"name": d["function"].get("name"), "arguments": ""}})
        call["function"]["arguments"] += d["function"].get("arguments", "")
    return [calls[i] for i in sorted(calls)]


def _refuse_unsupported(body: BaseModel, checks: dict[str, bool]) -> None:
    for field, refused in checks.items():
        if refused:
            raise bad_request(f"'{field}' is not supported by this server yet", field)


def sampling_payload(body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> dict:
    payload = {
        "model": body.model,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "max_new_tokens": max_tokens,
        "stop": body.stop,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
    }
    if body.top_p == 0:
        payload["top_p"], payload["temperature"] = 1.0, 0.0  # top_p 0 keeps only the likeliest token
    for name in ("top_k", "repetition_penalty", "ignore_eos", "stop_token_ids"):
        if getattr(body, name) is not None:
            payload[name] = getattr(body, name)
    return payload


def choice_payloads(payload: dict, n: int, seed: int | None) -> list[dict]:
    """n requests for n choices: distinct seeds, reproducible when a seed is given (wrapping around
    within 64 bits)."""
    span = SEED_MAX - SEED_MIN + 1
    return [payload | {"seed": None if seed is None else (seed + i - SEED_MIN) % span + SEED_MIN} for i in range(n)]


def chunk_builder(kind: str, cid: str, created: int, model: str, include_usage: bool):
    """Streamed chunks of one response: with include_usage, every chunk has a `usage` key (null
    until the last), as OpenAI sends them."""

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": cid, "object": kind, "created": created, "model": model, "system_fingerprint": None,
               "choices": choices}
        if include_usage:
            out["usage"] = usage
        return out

    return chunk


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def encode_embedding(vector: list[float], fmt: str, dimensions: int | None) -> list[float] | str:
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vector = [x / norm for x in vector]
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def chat_message(reply: Delta) -> dict:
    message = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
        message["content"] = reply.text or None
    return message


# -- the app ----------------------------------------------------------------------------------


def create_app(settings: APISettings | None = None, http: httpx.AsyncClient | None = None) -> FastAPI:
    settings = settings or APISettings()
    own_http = http is None
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(settings.worker_timeout_s, connect=5.0),
                                     limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                                     headers=auth_headers(settings.cluster_secret))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("API up; controller %s; %s", settings.controller_address,
                 f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API key needed")
        try:
            yield
        finally:
            if own_http:
                await http.aclose()
            log.info("API stopped")

    app = FastAPI(title="parley OpenAI-compatible API", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(SendTimeout, timeout_s=settings.send_timeout_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    metrics: ServerMetrics = install_metrics(app, "api", count_all_requests=True, self_counted=frozenset(
        {"/v1/chat/completions", "/v1/completions"}))
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    gateway = app.state.gateway = WorkerGateway(http, settings.controller_address)

    known_keys = [k.encode() for k in settings.api_keys]

    async def check_api_key(request: Request) -> None:
        if not known_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
        given = key.strip().encode("latin-1")  # the header's own bytes (any of them), compared as bytes
        if not any(secrets.compare_digest(given, k) for k in known_keys):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    auth = [Depends(check_api_key)]

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in await gateway.list_models()])

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def get_model(model_id: str) -> ModelCard:
        if model_id not in await gateway.list_models():
            raise APIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
        return ModelCard(id=model_id)

    async def open_replies(model: str, payloads: list[dict]) -> list[Reply]:
        replies = [Reply(i, gateway.generate_stream(model, p)) for i, p in enumerate(payloads)]
        await start_replies(replies)
        return replies

    def record(endpoint: str, started: float, status: int | str, model: str, usage: UsageInfo | None) -> None:
        metrics.observe_request(endpoint, status, started)
        if status != 200:
            metrics.observe_error(endpoint, status)
        if usage is not None:
            metrics.observe_tokens(model, usage.prompt_tokens, usage.completion_tokens)

    async def run_replies(endpoint: str, model: str, payloads: list[dict], prompt_groups: list[int],
                          started: float) -> tuple[list[Delta], UsageInfo]:
        want_logprobs = payloads[0].get("logprobs") is not None
        """Non-streaming: every choice to its end. `prompt_groups[i]` says which prompt choice i
        answers, so prompt tokens are counted once per prompt."""
        try:
            replies = await open_replies(model, payloads)
            texts: dict[int, list[str]] = {r.index: [] for r in replies}
            logprobs: dict[int, list[dict]] = {r.index: [] for r in replies}
            calls: dict[int, list[dict]] = {r.index: [] for r in replies}
            finals: dict[int, Delta] = {}
            first = True
            async for d in merged_deltas(replies):
                if d.text and first:
                    metrics.observe_ttft(endpoint, started)
                    first = False
                texts[d.index].append(d.text)
                logprobs[d.index] += d.logprobs or []
                calls[d.index] += d.tool_calls or []
                if d.finish_reason is not None:
                    finals[d.index] = d
        except APIError as exc:
            record(endpoint, started, exc.status, model, None)
            raise
        usage = _usage(finals, prompt_groups)
        record(endpoint, started, 200, model, usage)
        out = [Delta(i, "".join(texts[i]), finals[i].finish_reason, logprobs=logprobs[i] if want_logprobs else None,
                     tool_calls=merge_tool_calls(calls[i]) or None) for i in sorted(texts)]
        return out, usage

    def _usage(finals: dict[int, Delta], prompt_groups: list[int]) -> UsageInfo:
        usage = UsageInfo()
        counted: set[int] = set()
        for i, d in finals.items():
            u = d.usage or {}
            group = prompt_groups[i]
            usage.add(0 if group in counted else u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
            counted.add(group)
        return usage

    async def stream_replies(endpoint: str, model: str, payloads: list[dict], prompt_groups: list[int],
                             started: float, render, include_usage: bool, usage_chunk) -> StreamingResponse:
        try:
            replies = await open_replies(model, payloads)
        except APIError as exc:
            record(endpoint, started, exc.status, model, None)
            raise

        async def events() -> AsyncIterator[bytes]:
            finals: dict[int, Delta] = {}
            status: int | str = 200
            first = True
            try:
                for prelude in render(None):
                    yield sse(prelude)
                async for d in merged_deltas(replies):
                    if d.text and first:
                        metrics.observe_ttft(endpoint, started)
                        first = False
                    if d.finish_reason is not None:
                        finals[d.index] = d
                    for event in render(d):
                        yield sse(event)
                if include_usage:
                    yield sse(usage_chunk(_usage(finals, prompt_groups)))
            except APIError as exc:
                status = exc.status
                yield sse(exc.body())
            except Exception as exc:  # never a silently truncated stream
                log.exception("reply stream failed")
                status = 500
                yield sse(APIError(500, f"internal server error: {type(exc).__name__}", type="server_error").body())
            finally:
                record(endpoint, started, status, model, _usage(finals, prompt_groups) if finals else None)
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest):
        started = time.perf_counter()
        endpoint = "/v1/chat/completions"
        _refuse_unsupported(body, {
            "functions": bool(body.functions), "function_call": body.function_call is not None,
            "logit_bias": bool(body.logit_bias), "audio": bool(body.audio),
        })
        messages = chat_messages(body.messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        payload = sampling_payload(body, max_tokens) | {"messages": messages, "echo": False}
        want_logprobs = logprob_count(body.logprobs, body.top_logprobs)
        if want_logprobs is not None:
            payload["logprobs"] = want_logprobs
        if body.response_format:
            payload["response_format"] = body.response_format
        if body.tools:
            payload["tools"], payload["tool_choice"] = body.tools, body.tool_choice
        elif body.tool_choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        n = body.n or 1
        cid, created = new_id("chatcmpl"), int(time.time())
        payloads = choice_payloads(payload | {"request_id": cid}, n, body.seed)
        chunk = chunk_builder("chat.completion.chunk", cid, created, body.model, body.include_usage)
        if body.stream:
            def render(d: Delta | None) -> list[dict]:
                if d is None:  # the first event of each choice carries the role
                    return [chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]) for i in range(n)]
                events = []
                lp = {"content": d.logprobs, "refusal": None} if d.logprobs else None
                if d.text or d.logprobs:
                    events.append(chunk([{"index": d.index, "delta": {"content": d.text}, "logprobs": lp,
                                          "finish_reason": None}]))
                if d.tool_calls:
                    events.append(chunk([{"index": d.index, "delta": {"tool_calls": d.tool_calls}, "logprobs": None,
                                          "finish_reason": None}]))
                if d.finish_reason is not None:
                    events.append(chunk([{"index": d.index, "delta": {}, "logprobs": None,
                                          "finish_reason": d.finish_reason}]))
                return events

            return await stream_replies(endpoint, body.model, payloads, [0] * n, started, render, body.include_usage,
                                        lambda usage: chunk([], usage.model_dump()))
        results, usage = await run_replies(endpoint, body.model, payloads, [0] * n, started)
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [{"index": r.index, "message": chat_message(r),
                         "logprobs": {"content": r.logprobs, "refusal": None} if r.logprobs is not None else None,
                         "finish_reason": r.finish_reason} for r in results],
            "usage": usage.model_dump(),
        }

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest):
        started = time.perf_counter()
        endpoint = "/v1/completions"
        _refuse_unsupported(body, {
            "logit_bias": bool(body.logit_bias),
            "suffix": bool(body.suffix), "best_of": body.best_of not in (None, 1),
        })
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise bad_request("prompt must be a string or a list of strings (token-id prompts are not supported)",
                              "prompt")
        if any(not p for p in prompts):
            raise bad_request("prompt must not be empty", "prompt")
        n = body.n or 1
        if n * len(prompts) > MAX_CHOICES:
            raise bad_request(f"n × the number of prompts is {n * len(prompts)}; one request may ask for at most "
                              f"{MAX_CHOICES} choices", "n")
        cid, created = new_id("cmpl"), int(time.time())
        base = sampling_payload(body, body.max_tokens) | {"echo": bool(body.echo), "request_id": cid}
        if body.logprobs is not None:
            base["logprobs"] = body.logprobs
        payloads, groups = [], []
        for p_index, prompt in enumerate(prompts):
            payloads += choice_payloads(base | {"prompt": prompt}, n, body.seed)
            groups += [p_index] * n
        chunk = chunk_builder("text_completion", cid, created, body.model, body.include_usage)
        if body.stream:
            def render(d: Delta | None) -> list[dict]:
                if d is None or (not d.text and d.finish_reason is None and not d.logprobs):
                    return []
                return [chunk([{"index": d.index, "text": d.text,
                                "logprobs": completion_logprobs(d.logprobs) if d.logprobs else None,
                                "finish_reason": d.finish_reason}])]

            return await stream_replies(endpoint, body.model, payloads, groups, started, render, body.include_usage,
                                        lambda usage: chunk([], usage.model_dump()))
        results, usage = await run_replies(endpoint, body.model, payloads, groups, started)
        return {
            "id": cid, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [{"index": r.index, "text": r.text, "finish_reason": r.finish_reason,
                         "logprobs": completion_logprobs(r.logprobs) if r.logprobs is not None else None}
                        for r in results],
            "usage": usage.model_dump(),
        }

    @app.post("/v1/embeddings", dependencies=auth)
    async def embeddings(body: EmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise bad_request("input must be a string or a list of strings (token-id input is not supported)", "input")
        if any(not t for t in texts):
            raise bad_request("input must not contain empty strings", "input")
        data, tokens = [], 0
        request_id = new_id("embd")
        for start in range(0, len(texts), EMBEDDING_BATCH):
            result = await gateway.embed(body.model, texts[start:start + EMBEDDING_BATCH], request_id)
            tokens += int(result.get("token_num", 0))
            for offset, vector in enumerate(result["embedding"]):
                data.append({"object": "embedding", "index": start + offset,
                             "embedding": encode_embedding(vector, body.encoding_format, body.dimensions)})
        metrics.observe_tokens(body.model, tokens, 0)
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.get("/health")
    async def health() -> dict:
        try:
            models = await gateway.list_models()
        except APIError as exc:
            return {"status": "degraded", "controller": exc.message, "models": []}
        return {"status": "ok", "models": models}

    return app
