"""Prometheus metrics for the api, controller and worker servers.

Each app gets its own `CollectorRegistry` (kept on `app.state`), so several servers can run in
one process (the tests, `parley serve`) without sharing or colliding counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# Latency buckets for LLM work: from a few milliseconds (TTFT on a warm small model) to minutes.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    def __init__(self, server: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("parley_requests", "Requests handled", ["server", "endpoint", "status"], registry=r)
        self.errors = Counter("parley_request_errors", "Requests that ended in an error", ["server", "endpoint", "code"], registry=r)
        self.latency = Histogram("parley_request_latency_seconds", "Time from request to last byte",
                                 ["server", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("parley_time_to_first_token_seconds", "Time from request to the first generated text",
                              ["server", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("parley_prompt_tokens", "Prompt tokens processed", ["server", "model"], registry=r)
        self.generation_tokens = Counter("parley_generation_tokens", "Tokens generated", ["server", "model"], registry=r)
        self.queue_length = Gauge("parley_queue_length", "Requests accepted and not finished (running + waiting)",
                                  ["server"], registry=r)
        self.running_batch_size = Gauge("parley_running_batch_size", "Sequences in the engine's decoding batch",
                                        ["server"], registry=r)
        self.prompt_tokens_reused = Gauge(
            "parley_prompt_tokens_reused", "Prompt tokens whose KV came from the engine's prefix cache, since start",
            ["server"], registry=r)
        self.workers = Gauge("parley_workers", "Workers registered with the controller", ["server"], registry=r)
        self.server = server
        self._collect_hooks: list[Callable[[], None]] = []

    def on_collect(self, hook: Callable[[], None]) -> None:
        """Run `hook` before each scrape, to refresh gauges from live state."""
        self._collect_hooks.append(hook)

    def observe_request(self, endpoint: str, status: int | str, started: float) -> None:
        self.requests.labels(self.server, endpoint, str(status)).inc()
        self.latency.labels(self.server, endpoint).observe(time.perf_counter() - started)

    def observe_error(self, endpoint: str, code: int | str) -> None:
        self.errors.labels(self.server, endpoint, str(code)).inc()

    def observe_ttft(self, endpoint: str, started: float) -> None:
        self.ttft.labels(self.server, endpoint).observe(time.perf_counter() - started)

    def observe_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(self.server, model).inc(prompt)
        self.generation_tokens.labels(self.server, model).inc(completion)

    def render(self) -> Response:
        for hook in self._collect_hooks:
            hook()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI, server: str, count_all_requests: bool = False,
                    self_counted: frozenset[str] = frozenset()) -> ServerMetrics:
    """Attach a `ServerMetrics` to the app and serve it at GET /metrics. With `count_all_requests`
    every routed request is counted and timed by a middleware, except the paths in `self_counted`:
    streaming endpoints count themselves, timed to the last byte."""
    disable_created_metrics()  # the `_created` series only double the output
    metrics = ServerMetrics(server)
    app.state.metrics = metrics

    if count_all_requests:
        app.add_middleware(RequestCounter, metrics=metrics, skip=self_counted | {"/metrics"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        return request.app.state.metrics.render()

    return metrics


class RequestCounter:
    """Counts and times each routed request (a plain ASGI middleware: Starlette's decorator-style
    middleware costs about a millisecond per request, which the controller pays on every call)."""

    def __init__(self, app, metrics: ServerMetrics, skip: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.skip = skip

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", None)  # set by the router; None for unrouted paths
            if path is not None and path not in self.skip:
                self.metrics.observe_request(path, status, started)
                if status >= 400:
                    self.metrics.observe_error(path, status)
