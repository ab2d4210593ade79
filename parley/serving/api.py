"""The OpenAI-compatible API server: its settings, its routes and the app factory.

The routes are thin: the key check (parley.serving.key_auth: who asks), the model check and the limits, then
the serving class (parley.serving.openai_serving), which does the work over the cluster client. With a database,
every request to a model is recorded as usage, written in the background (parley.store.usage) and, at a clean
shutdown, before the database closes. The OpenAPI document lists each route's typed response, the errors it
answers with (OpenAI's error body), and `text/event-stream` for streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, Field, model_validator

from parley.serving.api_errors import install_error_handlers
from parley.serving.assistant_requests import AssistantRequests
from parley.serving.cluster_auth import auth_headers
from parley.serving.cluster_client import Cluster, ClusterClient
from parley.serving.cluster_errors import ClusterError
from parley.serving.key_auth import Caller, KeyAuth
from parley.serving.metrics import ServerMetrics, install_metrics
from parley.serving.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from parley.serving.openai_serving import APIRequest, OpenAIServing
from parley.serving.request_limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SEND_TIMEOUT_S,
    BodySizeLimit,
    SendTimeout,
)
from parley.serving.responses_schemas import (
    DeletedResponse,
    InputItemList,
    ResponseObject,
    ResponsesRequest,
)
from parley.serving.responses_serving import ResponsesServing
from parley.serving.tokenizer_routes import install_tokenizer_routes
from parley.store.database import Database
from parley.store.responses import ResponseStore
from parley.store.usage import UsageRecorder

log = logging.getLogger("parley.api")

_ERROR_STATUSES = {
    400: "the request is invalid (a field out of range, an unsupported field, a prompt longer than the context window)",
    401: "no API key, or a wrong one (unknown, revoked, or its user is disabled)",
    404: "no such model, or one the API key may not use",
    413: "the request body is larger than the server accepts",
    429: "over a rate limit of the key or its user (code rate_limit_exceeded), over a token budget (code "
         "insufficient_quota), or the workers of this model are full; the Retry-After header says when to retry",
    500: "the server failed",
    502: "a worker failed or stopped while answering",
    503: "the controller, or every worker of the model, is unreachable",
    504: "a worker did not answer in time",
}
_ERRORS: dict = {status: {"model": ErrorResponse, "description": what} for status, what in _ERROR_STATUSES.items()}


def _responses(stream_object: str) -> dict:
    """The errors, and the stream's media type, of a generation route."""
    return _ERRORS | {200: {"description": f"the response; with `stream: true`, server-sent events, each a "
                                          f"`{stream_object}` object, then `data: [DONE]`",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


class APISettings(BaseModel):
    controller_address: str = "http://127.0.0.1:21001"
    api_keys: list[str] = Field(default_factory=list)  # static keys (any of them is accepted); some: a key is needed
    # Every request needs a key: a user's (from the database) or one of api_keys. Off, and no api_keys: no key is
    # needed, and the requests are the local user's.
    require_keys: bool = False
    allowed_origins: list[str] = Field(default_factory=list)  # CORS; empty: same-origin only
    worker_timeout_s: float = Field(120.0, gt=0)  # longest silence from a worker mid-reply
    cluster_secret: str | None = None  # sent to the controller and workers
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)  # a bigger request body is a 413
    send_timeout_s: float = Field(DEFAULT_SEND_TIMEOUT_S, gt=0)  # a client that reads nothing this long is dropped
    # The store of assistants and knowledge, users' API keys, their limits and usage (the web UI's database); None:
    # none of those (`parley api` passes the default database unless told --no-assistants).
    db_url: str | None = None

    @model_validator(mode="after")
    def _some_key_possible(self) -> APISettings:
        if self.require_keys and not self.api_keys and not self.db_url:
            raise ValueError("keys are required, but there are none: no static api_keys and no database of users' keys")
        return self


# -- the app ----------------------------------------------------------------------------------

_Body = TypeVar("_Body", ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest)
_Result = TypeVar("_Result")


def create_app(settings: APISettings | None = None, http: httpx.AsyncClient | None = None,
               cluster: Cluster | None = None) -> FastAPI:
    """`cluster`: where the models are (default: the controller at `settings.controller_address`)."""
    settings = settings or APISettings()
    own_http = http is None
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(settings.worker_timeout_s, connect=5.0),
                                     limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                                     headers=auth_headers(settings.cluster_secret))

    db = Database(settings.db_url) if settings.db_url else None
    keys = KeyAuth(settings.api_keys, db, settings.require_keys)
    recorder = UsageRecorder(db) if db is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if db is not None:
            await asyncio.to_thread(db.upgrade)
            await keys.start()
            await recorder.start()
        log.info("API up; models from %s; %s", "the controller at " + settings.controller_address if cluster is None
                 else type(cluster).__name__, keys.describe())
        if db is not None:
            log.info("assistants, users' limits and usage in %s", db.display_url)
        else:
            log.info("no database: no assistants, no users' keys, no limits, no usage records")
        try:
            yield
        finally:
            if recorder is not None:
                await recorder.stop()  # everything recorded is written before the database closes
            if own_http:
                await http.aclose()
            if db is not None:
                db.close()
            log.info("API stopped")

    app = FastAPI(title="parley OpenAI-compatible API", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(SendTimeout, timeout_s=settings.send_timeout_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    metrics: ServerMetrics = install_metrics(app, "api", count_all_requests=True, self_counted=frozenset(
        {"/v1/chat/completions", "/v1/completions", "/v1/responses"}))
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    models = app.state.cluster = cluster or ClusterClient(http, settings.controller_address)
    assistants = AssistantRequests(db, models) if db is not None else None
    serving = OpenAIServing(models, metrics, assistants)
    install_tokenizer_routes(app, models, keys)  # /tokenize, /detokenize, /tokenizer_info (vLLM's)
    responses = ResponsesServing(serving, ResponseStore(db) if db is not None else None)

    async def caller_of(request: Request) -> Caller:
        return await keys.check(request.headers.get("authorization"))

    asking = Depends(caller_of)

    async def served(endpoint: str, body: _Body, caller: Caller,
                     work: Callable[[_Body, APIRequest], Awaitable[_Result]]) -> _Result:
        """A request to a model: the key may use it, its limits admit it, then the work; recorded as usage
        however it ends (the serving code records a reply that ends, this a request that fails first)."""
        request = APIRequest(caller, endpoint, body.model, recorder)
        try:
            keys.check_model(caller, body.model)
            await keys.admit(caller)
            return await work(body, request)
        except BaseException as exc:
            request.fail(exc)
            raise

    @app.get("/v1/models", responses=_ERRORS)
    async def list_models(caller: Caller = asking) -> ModelList:
        return ModelList(data=await serving.model_cards(caller))

    @app.get("/v1/models/{model_id:path}", responses=_ERRORS)
    async def get_model(model_id: str, caller: Caller = asking) -> ModelCard:
        return await serving.model_card(model_id, caller)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=_responses("chat.completion.chunk"))
    async def chat_completions(body: ChatCompletionRequest, caller: Caller = asking):
        return await served("/v1/chat/completions", body, caller, serving.chat)

    @app.post("/v1/completions", response_model=Completion, responses=_responses("text_completion"))
    async def completions(body: CompletionRequest, caller: Caller = asking):
        return await served("/v1/completions", body, caller, serving.completions)

    @app.post("/v1/responses", response_model=ResponseObject, responses=_ERRORS | {200: {
        "description": "the response; with `stream: true`, OpenAI's typed server-sent events (`event: TYPE`, "
                       "`data: {...}`), from `response.created` to `response.completed`",
        "content": {"text/event-stream": {"schema": {
            "type": "object", "required": ["event", "data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}}}}})
    async def create_response(body: ResponsesRequest, caller: Caller = asking):
        return await served("/v1/responses", body, caller, responses.create)

    @app.get("/v1/responses/{response_id}", responses=_ERRORS)
    async def get_response(response_id: str, caller: Caller = asking) -> ResponseObject:
        return await responses.get(response_id, caller)

    @app.delete("/v1/responses/{response_id}", responses=_ERRORS)
    async def delete_response(response_id: str, caller: Caller = asking) -> DeletedResponse:
        return await responses.delete(response_id, caller)

    @app.get("/v1/responses/{response_id}/input_items", responses=_ERRORS)
    async def response_input_items(response_id: str, order: Literal["asc", "desc"] = "desc",
                                   limit: int = Query(20, ge=1, le=100), after: str | None = Query(None, max_length=100),
                                   before: str | None = Query(None, max_length=100),
                                   caller: Caller = asking) -> InputItemList:
        return await responses.input_items(response_id, caller, order, limit, after, before)

    @app.post("/v1/embeddings", responses=_ERRORS)
    async def embeddings(body: EmbeddingRequest, caller: Caller = asking) -> EmbeddingList:
        return await served("/v1/embeddings", body, caller, serving.embeddings)

    @app.get("/health")
    async def health() -> dict:
        try:
            served = await models.list_models()
        except ClusterError as exc:
            return {"status": "degraded", "controller": exc.message, "models": []}
        return {"status": "ok", "models": served}

    return app
