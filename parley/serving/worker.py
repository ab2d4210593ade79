"""The model worker: one engine behind parley's native stream and FastChat's worker endpoints.

It registers with the controller, sends heartbeats carrying its queue length, and re-registers
when the controller restarts or forgets it. `POST /parley/generate` takes the API's
GenerationRequest as it is, hands it to the engine and streams the engine's deltas back, one JSON
line each; FastChat's `/worker_generate_stream` (gen_params in, cumulative text out) is an adapter
over the same path (parley.serving.fastchat_worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from parley.conversation.matching import DEFAULT_TEMPLATE, template_for_model_name
from parley.conversation.templates import NAMED_TEMPLATES, written_named_template
from parley.engines.base import Engine, GenerationChunk, GenerationRequest
from parley.errors import InvalidRequestError, ParleyError
from parley.serving.cluster_auth import ClusterAuthMiddleware, auth_headers
from parley.serving.fastchat_conv import fastchat_conversation
from parley.serving.fastchat_worker import install_fastchat_routes
from parley.serving.metrics import ServerMetrics, install_metrics
from parley.serving.protocol import (
    DETOKENIZE_PATH,
    HEART_BEAT_INTERVAL_S,
    NATIVE_PROTOCOL,
    NATIVE_STREAM_PATH,
    TOKENIZE_PATH,
    TOKENIZER_INFO_PATH,
    CountTokenRequest,
    DetokenizeReply,
    DetokenizeRequest,
    EmbeddingsRequest,
    ErrorCode,
    StreamError,
    StreamFrame,
    TokenizeReply,
    TokenizeRequest,
    TokenizerError,
    TokenizerInfo,
    WorkerStatus,
)
from parley.serving.request_limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SEND_TIMEOUT_S,
    BodySizeLimit,
    SendTimeout,
)
from parley.serving.worker_errors import (
    WorkerError,
    error_code_of,
    failure_for_client,
    json_body,
    parsed,
)

log = logging.getLogger("parley.worker")


class WorkerSettings(BaseModel):
    model_names: list[str] = Field(min_length=1)
    worker_address: str
    controller_address: str = "http://127.0.0.1:21001"
    register_with_controller: bool = True
    limit_worker_concurrency: int = Field(64, ge=1)  # requests generating at once
    max_queue_length: int = Field(256, ge=0)  # requests waiting beyond that; more are refused (429)
    stream_interval: int = Field(1, ge=1)  # engine steps per streamed chunk
    conv_template: str | None = None
    heart_beat_interval_s: float = Field(HEART_BEAT_INTERVAL_S, gt=0)
    speed: float = Field(1.0, gt=0)
    cluster_secret: str | None = None  # with one, every request but /health must carry it
    max_body_bytes: int = Field(4 * DEFAULT_MAX_BODY_BYTES, ge=1024)  # the API's limit, with room for JSON escapes
    send_timeout_s: float = Field(DEFAULT_SEND_TIMEOUT_S, gt=0)  # a reader that takes nothing this long is dropped


class ModelWorker:
    """The worker's state: engine, admission control, controller membership."""

    def __init__(self, engine: Engine, settings: WorkerSettings, metrics: ServerMetrics):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        info = engine.model_info
        # What FastChat's API server asks for: a named template, never the model's Jinja one.
        written = written_named_template(info.chat_template or "")  # a model fine-tuned with --conv-template NAME
        conv_name = (settings.conv_template or (written and written.name) or template_for_model_name(info.name)
                     or next(filter(None, map(template_for_model_name, settings.model_names)), None) or DEFAULT_TEMPLATE)
        self.conv = NAMED_TEMPLATES[conv_name]
        engine.chat_template_name  # noqa: B018 - an unknown --conv-template fails here, at start-up
        self._slots = asyncio.Semaphore(settings.limit_worker_concurrency)
        self.in_flight = 0
        self.registered = False

    # -- controller membership -----------------------------------------------------------

    def status(self) -> WorkerStatus:
        return WorkerStatus(model_names=self.settings.model_names, speed=self.settings.speed, queue_length=self.in_flight)

    async def register(self, http: httpx.AsyncClient) -> bool:
        url = self.settings.controller_address.rstrip("/") + "/register_worker"
        response = await http.post(url, json={
            "worker_name": self.settings.worker_address, "check_heart_beat": True,
            "worker_status": self.status().model_dump(), "multimodal": False,
        })
        response.raise_for_status()
        self.registered = bool(response.json().get("registered", True))
        return self.registered

    async def heartbeat(self, http: httpx.AsyncClient) -> None:
        """One heartbeat; registers (again) when the controller does not know this worker."""
        base = self.settings.controller_address.rstrip("/")
        try:
            if not self.registered:
                if await self.register(http):
                    log.info("registered with the controller at %s as %s (models: %s)", base,
                             self.settings.worker_address, ", ".join(self.settings.model_names))
                return
            response = await http.post(base + "/receive_heart_beat", json={
                "worker_name": self.settings.worker_address, "queue_length": self.in_flight})
            response.raise_for_status()
            if not response.json().get("exist", False):
                log.warning("the controller at %s does not know this worker (restarted?); registering again", base)
                self.registered = False
                await self.heartbeat(http)
        except httpx.HTTPStatusError as exc:
            why = ("it does not accept this worker's cluster secret (or needs one)" if exc.response.status_code == 401
                   else f"it answered {exc.response.status_code}: {exc.response.text[:300]}")
            log.error("the controller at %s refused this worker: %s; will retry", base, why)
            self.registered = False
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("controller at %s unreachable (%s); will retry", base, type(exc).__name__)
            self.registered = False

    async def heartbeat_forever(self, http: httpx.AsyncClient) -> None:
        while True:
            await self.heartbeat(http)
            # Until registered, retry sooner than the heartbeat interval.
            await asyncio.sleep(self.settings.heart_beat_interval_s if self.registered else min(2.0, self.settings.heart_beat_interval_s))

    # -- generation ----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, endpoint: str,
                       started: float | None = None) -> AsyncIterator[GenerationChunk]:
        """The engine's deltas for one request, as it came; admission control and metrics around them.
        Raises what the engine raises, and WorkerError when the worker is full."""
        metrics = self.metrics
        started = started or time.perf_counter()
        admitted = False
        outcome: int | str = 200
        try:
            limit = self.settings.limit_worker_concurrency + self.settings.max_queue_length
            if self.in_flight >= limit:
                raise WorkerError(ErrorCode.ENGINE_OVERLOADED,
                                  f"the worker is overloaded ({self.in_flight} requests in flight); retry later")
            self.in_flight += 1
            admitted = True
            async with self._slots:
                chunks = self._batched(self.engine.generate_stream(request))
                first = True
                async with contextlib.aclosing(chunks):  # a client that leaves cancels the generation
                    async for chunk in chunks:
                        if first and (chunk.text or chunk.tool_calls):
                            metrics.observe_ttft(endpoint, started)
                            first = False
                        if chunk.usage is not None:
                            metrics.observe_tokens(self.settings.model_names[0], chunk.usage.prompt_tokens,
                                                   chunk.usage.completion_tokens)
                        yield chunk
        except Exception as exc:
            outcome = error_code_of(exc)
            raise
        finally:
            if admitted:
                self.in_flight -= 1
            if outcome != 200:
                metrics.observe_error(endpoint, outcome)
            metrics.observe_request(endpoint, outcome, started)

    async def frames(self, request: GenerationRequest, endpoint: str,
                     started: float | None = None) -> AsyncIterator[GenerationChunk]:
        """The native stream of one request: its deltas, then, if it fails, a `StreamFrame` with the error a client
        may see (an engine bug reaches the client as an error, never as a hung stream). What the HTTP route and a
        Ray Serve replica both send."""
        try:
            async for chunk in self.generate(request, endpoint, started):
                yield chunk
        except Exception as exc:
            code, message = failure_for_client(exc, request.request_id, "generation")
            yield StreamFrame(error=StreamError(code=code, message=message))

    async def embed(self, body: EmbeddingsRequest) -> dict:
        """FastChat's embedding answer (`embedding`: one vector per text, `token_num`), or its error
        (`text`, `error_code`): every failure is this request's, in the answer's format."""
        try:
            texts = [body.input] if isinstance(body.input, str) else body.input
            if not texts or any(not t for t in texts):
                raise InvalidRequestError("embedding input must be non-empty text")
            result = await self.engine.embed(texts)
            if not all(math.isfinite(x) for vector in result.embeddings for x in vector):
                raise ParleyError("the model produced NaN or infinite values in an embedding")  # not JSON
        except Exception as exc:
            code, message = failure_for_client(exc, body.request_id or f"wrk-{uuid.uuid4().hex[:16]}", "embedding")
            return {"text": message, "error_code": code}
        self.metrics.observe_tokens(self.settings.model_names[0], result.prompt_tokens, 0)
        return {"embedding": result.embeddings, "token_num": result.prompt_tokens}

    async def tokenize(self, body: TokenizeRequest) -> TokenizeReply:
        tokens = await self.engine.tokenize(body.prompt, body.add_special_tokens)
        return TokenizeReply(tokens=tokens, count=len(tokens), max_model_len=self.engine.model_info.context_length)

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeReply:
        return DetokenizeReply(prompt=await self.engine.detokenize(body.tokens))

    def tokenizer_info(self) -> TokenizerInfo:
        info = self.engine.model_info
        return TokenizerInfo(eos_token=info.eos_token, bos_token=info.bos_token,
                             chat_template=self.engine.chat_template_text or info.chat_template,  # --chat-template's
                             model_max_length=info.context_length)

    def details(self) -> dict:
        """What the API asks a worker about its model; `parley` marks a parley worker: it accepts `messages` and
        renders them itself."""
        info, engine = self.engine.model_info, self.engine
        return {"context_length": info.context_length,
                "parley": {"messages": True, "protocol": NATIVE_PROTOCOL, "engine": engine.name,
                           "chat_template": engine.chat_template_name, "device": info.device, "dtype": info.dtype}}

    def refused(self, endpoint: str, code: int, started: float) -> None:
        """Count a request refused before it reached the engine (unreadable, out of range)."""
        self.metrics.observe_error(endpoint, code)
        self.metrics.observe_request(endpoint, code, started)

    async def _batched(self, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
        """`stream_interval` engine steps per chunk sent (1: every step as it comes)."""
        every = self.settings.stream_interval
        if every == 1:
            async for chunk in chunks:
                yield chunk
            return
        held: list[GenerationChunk] = []
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                held.append(chunk)
                if len(held) >= every or chunk.finish_reason is not None or chunk.tool_calls:
                    yield merged_chunks(held)
                    held = []
        if held:
            yield merged_chunks(held)


def merged_chunks(chunks: list[GenerationChunk]) -> GenerationChunk:
    """Several consecutive deltas as one."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    logprobs = [lp for c in chunks for lp in (c.logprobs or [])]
    calls = [t for c in chunks for t in (c.tool_calls or [])]
    return GenerationChunk(text="".join(c.text for c in chunks), reasoning="".join(c.reasoning for c in chunks), token_ids=[t for c in chunks for t in c.token_ids],
                           logprobs=logprobs or None, tool_calls=calls or None, finish_reason=last.finish_reason,
                           usage=last.usage)


def create_app(engine: Engine, settings: WorkerSettings) -> FastAPI:

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        beat = asyncio.create_task(worker.heartbeat_forever(app.state.http)) if settings.register_with_controller else None
        info = engine.model_info
        log.info("worker up at %s: %s (%s engine, %s, %s), models %s", settings.worker_address, info.name, engine.name,
                 info.device, info.dtype, ", ".join(settings.model_names))
        try:
            yield
        finally:
            if beat:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
            await app.state.http.aclose()
            await engine.aclose()
            log.info("worker stopped")

    app = FastAPI(title="parley worker", lifespan=lifespan)
    app.state.http = httpx.AsyncClient(timeout=10.0, headers=auth_headers(settings.cluster_secret))
    app.add_middleware(SendTimeout, timeout_s=settings.send_timeout_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    metrics = install_metrics(app, "worker", count_all_requests=True,
                              self_counted=frozenset({NATIVE_STREAM_PATH, "/worker_generate_stream", "/worker_generate"}))
    if settings.cluster_secret:
        app.add_middleware(ClusterAuthMiddleware, secret=settings.cluster_secret)
    worker = app.state.worker = ModelWorker(engine, settings, metrics)

    def refresh_gauges() -> None:
        metrics.queue_length.labels("worker").set(worker.in_flight)
        stats = engine.stats()
        metrics.running_batch_size.labels("worker").set(stats.running)
        metrics.prompt_tokens_reused.labels("worker").set(stats.cached_prompt_tokens)

    metrics.on_collect(refresh_gauges)

    @app.post(NATIVE_STREAM_PATH)
    async def parley_generate(request: Request) -> StreamingResponse:
        """parley's native stream: a GenerationRequest in, one StreamFrame (a delta) per line out."""
        raw = await json_body(request)
        started = time.perf_counter()

        async def lines() -> AsyncIterator[bytes]:
            try:
                generation = parsed(raw, GenerationRequest, ErrorCode.PARAM_OUT_OF_RANGE)
            except WorkerError as exc:
                worker.refused(NATIVE_STREAM_PATH, exc.code, started)
                yield StreamFrame(error=StreamError(code=exc.code, message=str(exc))).model_dump_json(
                    exclude_defaults=True).encode() + b"\n"
                return
            left_out = set() if generation.return_token_ids else {"token_ids"}
            async for frame in worker.frames(generation, NATIVE_STREAM_PATH, started):
                yield frame.model_dump_json(exclude_defaults=True, exclude=left_out).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    install_fastchat_routes(app, worker)

    @app.post("/worker_get_embeddings")
    async def worker_get_embeddings(request: Request) -> dict:
        raw = await json_body(request)
        try:
            body = parsed(raw, EmbeddingsRequest, ErrorCode.PARAM_OUT_OF_RANGE)
        except WorkerError as exc:
            return {"text": str(exc), "error_code": exc.code}
        return await worker.embed(body)

    def tokenizer_failure(exc: Exception, what: str) -> JSONResponse:
        code, message = failure_for_client(exc, f"wrk-{uuid.uuid4().hex[:16]}", what)
        status = 400 if 40000 <= code < 50000 else 500
        return JSONResponse(TokenizerError(error=StreamError(code=code, message=message)).model_dump(), status_code=status)

    @app.post(TOKENIZE_PATH, response_model=TokenizeReply)
    async def parley_tokenize(request: Request):
        """The engine's token ids for a text (the API's /tokenize)."""
        try:
            return await worker.tokenize(parsed(await json_body(request), TokenizeRequest, ErrorCode.PARAM_OUT_OF_RANGE))
        except Exception as exc:  # the engine cannot tokenize, or failed on this text
            return tokenizer_failure(exc, "tokenization")

    @app.post(DETOKENIZE_PATH, response_model=DetokenizeReply)
    async def parley_detokenize(request: Request):
        """The text of token ids (the API's /detokenize); ids outside the vocabulary are refused."""
        try:
            return await worker.detokenize(parsed(await json_body(request), DetokenizeRequest,
                                                  ErrorCode.PARAM_OUT_OF_RANGE))
        except Exception as exc:
            return tokenizer_failure(exc, "detokenization")

    @app.post(TOKENIZER_INFO_PATH)
    async def parley_tokenizer_info() -> TokenizerInfo:
        return worker.tokenizer_info()

    @app.post("/worker_get_status")
    async def worker_get_status() -> WorkerStatus:
        return worker.status()

    @app.post("/count_token")
    async def count_token(body: CountTokenRequest) -> dict:
        try:
            return {"count": await engine.count_tokens(body.prompt), "error_code": 0}
        except Exception as exc:  # the tokenizer failed on this text
            code, message = failure_for_client(exc, f"wrk-{uuid.uuid4().hex[:16]}", "token count")
            return {"count": 0, "text": message, "error_code": code}

    @app.post("/worker_get_conv_template")
    async def worker_get_conv_template() -> dict:
        return {"conv": fastchat_conversation(worker.conv)}

    @app.post("/model_details")
    async def model_details() -> dict:
        return worker.details()

    @app.get("/health")
    async def health() -> dict:
        stats = engine.stats()
        return {"status": "ok", "models": settings.model_names, "registered": worker.registered,
                "queue_length": worker.in_flight, "running": stats.running}

    return app
