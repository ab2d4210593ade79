"""The controller: workers register and send heartbeats; clients ask where a model is served."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from parley.serving.api_errors import install_error_handlers
from parley.serving.cluster_auth import ClusterAuthMiddleware, auth_headers
from parley.serving.metrics import install_metrics
from parley.serving.protocol import (
    HEART_BEAT_EXPIRATION_S,
    GetWorkerAddressRequest,
    HeartBeatRequest,
    HeartBeatResponse,
    KnownModelsResponse,
    ListModelsResponse,
    RegisterWorkerRequest,
    ReportedStatus,
    WorkerAddressResponse,
    WorkerFailureReport,
    WorkerStatus,
)
from parley.serving.worker_registry import DispatchMethod, WorkerRegistry

log = logging.getLogger("parley.controller")


class ControllerSettings(BaseModel):
    dispatch_method: DispatchMethod = DispatchMethod.SHORTEST_QUEUE
    heart_beat_expiration_s: float = HEART_BEAT_EXPIRATION_S
    worker_timeout_s: float = 10.0  # for status requests the controller sends to workers
    cluster_secret: str | None = None  # with one, every request but /health must carry it


def create_app(settings: ControllerSettings | None = None, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    settings = settings or ControllerSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = asyncio.create_task(_expire_forever(app))
        log.info("controller up; dispatch=%s, workers expire after %.0f s of silence",
                 settings.dispatch_method.value, settings.heart_beat_expiration_s)
        try:
            yield
        finally:
            sweeper.cancel()
            await app.state.http.aclose()
            log.info("controller stopped")

    app = FastAPI(title="parley controller", lifespan=lifespan)
    install_error_handlers(app)
    app.state.settings = settings
    app.state.registry = WorkerRegistry(settings.dispatch_method, settings.heart_beat_expiration_s, clock=clock)
    app.state.http = httpx.AsyncClient(timeout=settings.worker_timeout_s, headers=auth_headers(settings.cluster_secret))
    metrics = install_metrics(app, "controller", count_all_requests=True)

    def refresh_gauges() -> None:
        metrics.workers.labels("controller").set(len(app.state.registry.workers))
        metrics.queue_length.labels("controller").set(app.state.registry.total_status().queue_length)

    metrics.on_collect(refresh_gauges)
    if settings.cluster_secret:
        app.add_middleware(ClusterAuthMiddleware, secret=settings.cluster_secret)

    async def fetch_status(name: str) -> ReportedStatus | None:
        try:
            response = await app.state.http.post(name.rstrip("/") + "/worker_get_status")
            response.raise_for_status()
            return ReportedStatus.model_validate(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("worker %s did not report its status: %s", name, str(exc).splitlines()[0])
            return None

    @app.post("/register_worker")
    async def register_worker(request: RegisterWorkerRequest) -> dict:
        registry: WorkerRegistry = app.state.registry
        status = request.worker_status
        current = registry.workers.get(request.worker_name)
        if status is None or (current is not None and set(current.model_names) - set(status.model_names)):
            # Nothing said, or a registration that would take models off a worker registered under this name:
            # what the worker at that address says of itself counts, not what the request claims.
            reported = await fetch_status(request.worker_name)
            if reported is not None and status is not None and reported.model_names != status.model_names:
                log.warning("a registration for %s claimed the models %s; the worker itself serves %s, which it keeps",
                            request.worker_name, ", ".join(status.model_names), ", ".join(reported.model_names))
            status = reported or (None if current is not None else status)
        if status is None:
            return {"registered": False}
        registry.register(request.worker_name, status, request.check_heart_beat, request.multimodal)
        log.info("registered worker %s serving %s", request.worker_name, ", ".join(status.model_names))
        return {"registered": True}

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> dict:
        registry: WorkerRegistry = app.state.registry
        for name, entry in list(registry.workers.items()):
            status = await fetch_status(name)
            if status is None:
                registry.remove(name)
                log.info("dropped unreachable worker %s", name)
            else:
                registry.register(name, status, entry.check_heart_beat, entry.multimodal)
        return {"workers": len(registry.workers)}

    @app.post("/list_models")
    async def list_models() -> ListModelsResponse:
        return ListModelsResponse(models=app.state.registry.models())

    @app.post("/list_language_models")
    async def list_language_models() -> ListModelsResponse:
        return ListModelsResponse(models=app.state.registry.models(multimodal=False))

    @app.post("/list_multimodal_models")
    async def list_multimodal_models() -> ListModelsResponse:
        return ListModelsResponse(models=app.state.registry.models(multimodal=True))

    @app.post("/get_worker_address")
    async def get_worker_address(request: GetWorkerAddressRequest) -> WorkerAddressResponse:
        return WorkerAddressResponse(address=app.state.registry.pick(request.model) or "")

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(request: HeartBeatRequest) -> HeartBeatResponse:
        exist = app.state.registry.heartbeat(request.worker_name, request.queue_length)
        if not exist:
            log.info("heartbeat from unknown worker %s; it will register again", request.worker_name)
        return HeartBeatResponse(exist=exist)

    @app.post("/known_models")
    async def known_models() -> KnownModelsResponse:
        """parley extension: models served now and models once served (so clients can tell
        "unknown model" from "no worker serves this model right now")."""
        registry: WorkerRegistry = app.state.registry
        return KnownModelsResponse(served=registry.models(), known=sorted(registry.known_models))

    @app.post("/report_worker_failure")
    async def report_worker_failure(report: WorkerFailureReport) -> dict:
        """parley extension: a client could not reach a worker. The controller checks for itself
        and drops the worker if it does not answer, so the next request goes elsewhere."""
        registry: WorkerRegistry = app.state.registry
        if report.worker_name not in registry.workers:
            return {"removed": False}
        if await fetch_status(report.worker_name) is not None:
            return {"removed": False}
        registry.remove(report.worker_name)
        log.warning("dropped worker %s: unreachable (%s)", report.worker_name, report.reason or "reported by a client")
        return {"removed": True}

    @app.post("/worker_get_status")
    async def worker_get_status() -> WorkerStatus:
        return app.state.registry.total_status()

    @app.get("/test_connection", response_class=PlainTextResponse)
    async def test_connection() -> str:
        return "success"

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "workers": len(app.state.registry.workers), "models": app.state.registry.models()}

    return app


async def _expire_forever(app: FastAPI) -> None:
    registry: WorkerRegistry = app.state.registry
    while True:
        await asyncio.sleep(max(registry.expiration_s / 3, 0.05))
        for name in registry.expire():
            log.warning("worker %s sent no heartbeat for %.0f s; it no longer receives requests", name, registry.expiration_s)
