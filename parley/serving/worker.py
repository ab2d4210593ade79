"""The model worker: one engine behind FastChat's worker endpoints.

It registers with the controller, sends heartbeats carrying its queue length, and re-registers
when the controller restarts or forgets it. Generation streams `\\0`-terminated JSON chunks with
cumulative text, as FastChat's workers do; a request may carry `messages` instead of `prompt`
(parley's extension) so the worker renders them with the model's own chat template.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel, Field, ValidationError

from parley.conversation.formatter import ChatFormatter
from parley.conversation.matching import DEFAULT_TEMPLATE, template_for_model_name
from parley.conversation.templates import NAMED_TEMPLATES, written_named_template
from parley.engines.base import Engine, GenerationRequest, SamplingParams
from parley.errors import ContextLengthError, InvalidRequestError, ParleyError
from parley.serving.cluster_auth import ClusterAuthMiddleware, auth_headers
from parley.serving.fastchat_conv import fastchat_conversation
from parley.serving.metrics import ServerMetrics, install_metrics
from parley.serving.output_constraints import (
    ReplyReader,
    ToolPlan,
    guided_from_response_format,
)
from parley.serving.protocol import (
    HEART_BEAT_INTERVAL_S,
    CountTokenRequest,
    EmbeddingsRequest,
    ErrorCode,
    GenerateParams,
    WorkerChunk,
    WorkerStatus,
)
from parley.serving.request_limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SEND_TIMEOUT_S,
    BodySizeLimit,
    SendTimeout,
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


class WorkerError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _frame(chunk: WorkerChunk) -> bytes:
    return json.dumps(chunk.model_dump(exclude_none=True) | {"error_code": chunk.error_code}).encode() + b"\0"


class ModelWorker:
    """The worker's state: engine, chat formatter, admission control, controller membership."""

    def __init__(self, engine: Engine, settings: WorkerSettings, metrics: ServerMetrics):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        info = engine.model_info
        self.formatter = ChatFormatter.for_model(info, settings.conv_template)
        # What FastChat's API server asks for: a named template, never the model's Jinja one.
        written = written_named_template(info.chat_template or "")  # a model fine-tuned with --conv-template NAME
        conv_name = (settings.conv_template or (written and written.name) or template_for_model_name(info.name)
                     or next(filter(None, map(template_for_model_name, settings.model_names)), None) or DEFAULT_TEMPLATE)
        self.conv = NAMED_TEMPLATES[conv_name]
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

    def build_request(self, params: GenerateParams) -> tuple[GenerationRequest, str, ToolPlan | None]:
        """The engine request, the prompt text (for `echo`) and, when tools are offered, how to
        read the reply back into tool calls."""
        features = self.engine.features
        if (params.presence_penalty or params.frequency_penalty) and "penalties" not in features:
            raise WorkerError(ErrorCode.PARAM_OUT_OF_RANGE,
                              f"presence_penalty and frequency_penalty are not supported by the {self.engine.name} engine")
        if params.logprobs is not None and "logprobs" not in features:
            raise WorkerError(ErrorCode.PARAM_OUT_OF_RANGE, f"logprobs are not supported by the {self.engine.name} engine")
        if params.logprobs is not None and params.echo:
            raise WorkerError(ErrorCode.PARAM_OUT_OF_RANGE, "logprobs together with echo are not supported")
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
        stop_ids = list(params.stop_token_ids or [])
        try:
            guided = guided_from_response_format(params.response_format)
            plan = ToolPlan.of(params.tools, params.tool_choice) if params.tools else None
            if plan is not None and plan.constraint is not None:
                guided = plan.constraint
            if guided is not None and "guided" not in features:
                raise WorkerError(ErrorCode.PARAM_OUT_OF_RANGE,
                                  f"structured output and forced tool calls are not supported by the {self.engine.name} engine")
            if params.messages is not None:
                offered = params.tools if plan is not None and plan.mode != "none" else None
                try:
                    rendered = self.formatter.render(params.messages, tools=offered)
                except TemplateError as exc:  # a template that refuses these messages (`raise_exception`)
                    raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR,
                                      f"the chat template refused these messages: {exc}") from None
                prompt, add_special = rendered.text, rendered.add_special_tokens
                stop += [s for s in rendered.stop if s not in stop]
                stop_ids += [i for i in rendered.stop_token_ids if i not in stop_ids]
            elif params.prompt:
                prompt, add_special = params.prompt, True
                if plan is not None:
                    raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR, "tools need messages, not a prompt")
            else:
                raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR, "give a non-empty prompt or messages")
        except InvalidRequestError as exc:
            raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR, str(exc)) from None
        try:
            sampling = SamplingParams(
                temperature=0.0 if params.temperature <= 1e-5 else params.temperature,
                top_p=params.top_p, top_k=max(params.top_k, 0), repetition_penalty=params.repetition_penalty,
                max_new_tokens=params.max_new_tokens or self.engine.model_info.context_length,
                stop=[s for s in stop if s], stop_token_ids=stop_ids,
                seed=params.seed, ignore_eos=params.ignore_eos, presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty, logprobs=params.logprobs, guided=guided,
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "parameters"
            raise WorkerError(ErrorCode.PARAM_OUT_OF_RANGE, f"{field}: {err['msg']}") from None
        return GenerationRequest(prompt=prompt, add_special_tokens=add_special, params=sampling), prompt, plan

    async def generate_stream(self, raw: dict, endpoint: str, started: float | None = None) -> AsyncIterator[WorkerChunk]:
        """FastChat-style chunks with cumulative text; failures become a chunk with an error code."""
        metrics = self.metrics
        started = started or time.perf_counter()
        admitted = False
        outcome: int | str = 200
        request_id = _request_id(raw)
        try:
            if "__invalid__" in raw:
                raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR, raw["__invalid__"])
            try:
                params = GenerateParams.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise WorkerError(ErrorCode.VALIDATION_TYPE_ERROR,
                                  f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
            forwarding = "forwarding" in self.engine.features
            if forwarding:  # an upstream server does it all: forward the request as it came
                request, prompt, reader = None, params.prompt or "", None
            else:  # rendering a long conversation takes a while: not on the event loop, which serves every stream
                request, prompt, plan = await asyncio.to_thread(self.build_request, params)
                reader = plan.reader() if plan is not None else None
            limit = self.settings.limit_worker_concurrency + self.settings.max_queue_length
            if self.in_flight >= limit:
                raise WorkerError(ErrorCode.ENGINE_OVERLOADED,
                                  f"the worker is overloaded ({self.in_flight} requests in flight); retry later")
            self.in_flight += 1
            admitted = True
            prefix = prompt if params.echo else ""
            async with self._slots:
                chunks = self._forwarded(params, endpoint, started) if forwarding \
                    else self._generated(request, prefix, reader, endpoint, started)
                async with contextlib.aclosing(chunks):  # a client that leaves cancels the generation
                    async for chunk in chunks:
                        yield chunk
        except Exception as exc:  # an engine bug must reach the client as an error, not a hung stream
            outcome, message = failure_for_client(exc, request_id, "generation")
            yield WorkerChunk(text=message, error_code=outcome)
        finally:
            if admitted:
                self.in_flight -= 1
            if outcome != 200:
                metrics.observe_error(endpoint, outcome)
            metrics.observe_request(endpoint, outcome, started)

    async def _generated(self, request: GenerationRequest, prefix: str, reader: ReplyReader | None, endpoint: str,
                         started: float) -> AsyncIterator[WorkerChunk]:
        """From the local engine: cumulative text (or tool calls), new log-probabilities, usage."""
        text = ""
        steps = 0
        first = True
        logprobs: list[dict] = []  # not yet sent
        async for chunk in self.engine.generate_stream(request):
            text += chunk.text
            steps += 1
            if chunk.logprobs:
                logprobs += [lp.model_dump() for lp in chunk.logprobs]
            if chunk.text and first:
                self.metrics.observe_ttft(endpoint, started)
                first = False
            if chunk.finish_reason is not None:
                usage = chunk.usage
                self.metrics.observe_tokens(self.settings.model_names[0], usage.prompt_tokens, usage.completion_tokens)
                content, calls, finish = (text, None, chunk.finish_reason) if reader is None \
                    else reader.final(text, chunk.finish_reason)
                yield WorkerChunk(text=prefix + content, finish_reason=finish, tool_calls=calls,
                                  token_logprobs=logprobs or None, usage={
                                      "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                      "total_tokens": usage.total_tokens})
            elif steps % self.settings.stream_interval == 0 and chunk.text:
                content, calls = (text, None) if reader is None else reader.partial(text)
                yield WorkerChunk(text=prefix + content, tool_calls=calls, token_logprobs=logprobs or None)
                logprobs = []

    async def _forwarded(self, params: GenerateParams, endpoint: str, started: float) -> AsyncIterator[WorkerChunk]:
        """From an upstream server (the `openai` engine): the request goes as it came."""
        first = True
        async for out in self.engine.forward(params.model_dump(exclude_none=True)):
            if first and (out.get("text") or out.get("tool_calls")):
                self.metrics.observe_ttft(endpoint, started)
                first = False
            if out.get("usage"):
                u = out["usage"]
                self.metrics.observe_tokens(self.settings.model_names[0], u["prompt_tokens"], u["completion_tokens"])
            yield WorkerChunk(**out)


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
                              self_counted=frozenset({"/worker_generate_stream", "/worker_generate"}))
    if settings.cluster_secret:
        app.add_middleware(ClusterAuthMiddleware, secret=settings.cluster_secret)
    worker = app.state.worker = ModelWorker(engine, settings, metrics)

    def refresh_gauges() -> None:
        metrics.queue_length.labels("worker").set(worker.in_flight)
        metrics.running_batch_size.labels("worker").set(engine.stats().running)

    metrics.on_collect(refresh_gauges)

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> StreamingResponse:
        raw = await _json_body(request)
        started = time.perf_counter()

        async def frames() -> AsyncIterator[bytes]:
            async for chunk in worker.generate_stream(raw, "/worker_generate_stream", started):
                yield _frame(chunk)

        return StreamingResponse(frames(), media_type="application/octet-stream")

    @app.post("/worker_generate")
    async def worker_generate(request: Request) -> JSONResponse:
        raw = await _json_body(request)
        last = None
        async for chunk in worker.generate_stream(raw, "/worker_generate"):
            last = chunk
        return JSONResponse(last.model_dump(exclude_none=True) | {"error_code": last.error_code})

    @app.post("/worker_get_embeddings")
    async def worker_get_embeddings(request: Request) -> dict:
        raw = await _json_body(request)
        try:
            if "__invalid__" in raw:
                raise InvalidRequestError(raw["__invalid__"])
            try:
                body = EmbeddingsRequest.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise InvalidRequestError(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
            texts = [body.input] if isinstance(body.input, str) else body.input
            if not texts or any(not t for t in texts):
                raise InvalidRequestError("embedding input must be non-empty text")
            result = await engine.embed(texts)
            if not all(math.isfinite(x) for vector in result.embeddings for x in vector):
                raise ParleyError("the model produced NaN or infinite values in an embedding")  # not JSON
        except Exception as exc:  # every failure is this request's error, in the reply's format
            code, message = failure_for_client(exc, _request_id(raw), "embedding")
            return {"text": message, "error_code": code}
        metrics.observe_tokens(settings.model_names[0], result.prompt_tokens, 0)
        return {"embedding": result.embeddings, "token_num": result.prompt_tokens}

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
        info = engine.model_info
        # `parley` marks a parley worker: it accepts `messages` and renders them itself.
        return {"context_length": info.context_length,
                "parley": {"messages": True, "engine": engine.name, "chat_template": worker.formatter.name,
                           "device": info.device, "dtype": info.dtype}}

    @app.get("/health")
    async def health() -> dict:
        stats = engine.stats()
        return {"status": "ok", "models": settings.model_names, "registered": worker.registered,
                "queue_length": worker.in_flight, "running": stats.running}

    return app


def _request_id(raw: dict) -> str:
    given = raw.get("request_id")
    return given if isinstance(given, str) and 0 < len(given) <= 100 and given.isprintable() else f"wrk-{uuid.uuid4().hex[:16]}"


def failure_for_client(exc: Exception, request_id: str, what: str) -> tuple[int, str]:
    """The error code and message a client sees for a failed request. A fault of the request says what is wrong;
    anything else (an engine bug, CUDA, an upstream's failure) goes to this log in full, under the request id
    the client is told, and the client learns no internals."""
    if isinstance(exc, WorkerError):
        return exc.code, exc.message
    if isinstance(exc, ContextLengthError):
        return ErrorCode.CONTEXT_OVERFLOW, str(exc)
    if isinstance(exc, InvalidRequestError):
        return ErrorCode.PARAM_OUT_OF_RANGE, str(exc)
    status = getattr(exc, "status", None)  # an upstream's answer
    if status == 429:  # an upstream's 429 stays a 429
        log.warning("request %s: the upstream is rate-limiting: %s", request_id, exc)
        return ErrorCode.ENGINE_OVERLOADED, f"the upstream server is rate-limiting requests; retry later (request {request_id})"
    if isinstance(exc, ParleyError):
        log.error("request %s: %s failed: %s", request_id, what, exc)
    else:
        log.error("request %s: %s failed", request_id, what, exc_info=exc)
    return ErrorCode.INTERNAL_ERROR, f"the {what} failed in the worker (request {request_id}; its log has the details)"


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {"__invalid__": "the request body is not JSON"}
    return body if isinstance(body, dict) else {"__invalid__": "the request body must be a JSON object"}
