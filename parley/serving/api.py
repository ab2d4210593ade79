"""The OpenAI-compatible API server: its settings, its routes and the app factory.

The routes are thin: authentication, then the serving class (parley.serving.openai_serving), which
does the work over the cluster client. The OpenAPI document lists each route's typed response, the
errors it answers with (OpenAI's error body), and `text/event-stream` for streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, Field

from parley.serving.api_errors import APIError, install_error_handlers
from parley.serving.assistant_requests import AssistantRequests
from parley.serving.cluster_auth import auth_headers
from parley.serving.cluster_client import ClusterClient
from parley.serving.cluster_errors import ClusterError
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
from parley.serving.openai_serving import OpenAIServing
from parley.serving.request_limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SEND_TIMEOUT_S,
    BodySizeLimit,
    SendTimeout,
)
from parley.store.database import Database

log = logging.getLogger("parley.api")

_ERROR_STATUSES = {
    400: "the request is invalid (a field out of range, an unsupported field, a prompt longer than the context window)",
    401: "no API key, or a wrong one",
    404: "no such model",
    413: "the request body is larger than the server accepts",
    429: "the workers of this model are full; retry later",
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
    api_keys: list[str] = Field(default_factory=list)  # empty: no key needed
    allowed_origins: list[str] = Field(default_factory=list)  # CORS; empty: same-origin only
    worker_timeout_s: float = Field(120.0, gt=0)  # longest silence from a worker mid-reply
    cluster_secret: str | None = None  # sent to the controller and workers
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)  # a bigger request body is a 413
    send_timeout_s: float = Field(DEFAULT_SEND_TIMEOUT_S, gt=0)  # a client that reads nothing this long is dropped
    # The store of assistants and knowledge (the web UI's database); None: no assistants (`parley api` passes
    # the default database unless told --no-assistants).
    db_url: str | None = None


# -- the app ----------------------------------------------------------------------------------


def create_app(settings: APISettings | None = None, http: httpx.AsyncClient | None = None) -> FastAPI:
    settings = settings or APISettings()
    own_http = http is None
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(settings.worker_timeout_s, connect=5.0),
                                     limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                                     headers=auth_headers(settings.cluster_secret))

    db = Database(settings.db_url) if settings.db_url else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if db is not None:
            await asyncio.to_thread(db.upgrade)
        log.info("API up; controller %s; %s; assistants from %s", settings.controller_address,
                 f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API key needed",
                 db.display_url if db is not None else "nowhere (off)")
        try:
            yield
        finally:
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
        {"/v1/chat/completions", "/v1/completions"}))
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    cluster = app.state.cluster = ClusterClient(http, settings.controller_address)
    assistants = AssistantRequests(db, cluster, keyed=bool(settings.api_keys)) if db is not None else None
    serving = OpenAIServing(cluster, metrics, assistants)

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

    @app.get("/v1/models", dependencies=auth, responses=_ERRORS)
    async def list_models() -> ModelList:
        return ModelList(data=await serving.model_cards())

    @app.get("/v1/models/{model_id:path}", dependencies=auth, responses=_ERRORS)
    async def get_model(model_id: str) -> ModelCard:
        return await serving.model_card(model_id)

    @app.post("/v1/chat/completions", dependencies=auth, response_model=ChatCompletion,
              responses=_responses("chat.completion.chunk"))
    async def chat_completions(body: ChatCompletionRequest):
        return await serving.chat(body)

    @app.post("/v1/completions", dependencies=auth, response_model=Completion,
              responses=_responses("text_completion"))
    async def completions(body: CompletionRequest):
        return await serving.completions(body)

    @app.post("/v1/embeddings", dependencies=auth, responses=_ERRORS)
    async def embeddings(body: EmbeddingRequest) -> EmbeddingList:
        return await serving.embeddings(body)

    @app.get("/health")
    async def health() -> dict:
        try:
            models = await cluster.list_models()
        except ClusterError as exc:
            return {"status": "degraded", "controller": exc.message, "models": []}
        return {"status": "ok", "models": models}

    return app
