"""One ASGI app of the OpenAI API and the web UI, as Serve's ingress serves them on its one HTTP port.

The API answers its own paths (`/v1/...`, vLLM's tokenizer endpoints, `/health`, `/metrics` and its OpenAPI
document); the web UI answers the rest (`/`, `/app/...`, `/api/...`). Both apps' start-up and shut-down (their
lifespans: the database, the usage recorder, replies being written) run as the ingress replica starts and stops.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

log = logging.getLogger("parley.ray")

API_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info", "/health", "/metrics", "/docs", "/openapi.json")


class Gateway:
    def __init__(self, api: FastAPI, web: FastAPI | None):
        self.api, self.web = api, web
        self._stack: contextlib.AsyncExitStack | None = None

    def app_for(self, path: str) -> FastAPI:
        if self.web is None or path.startswith(API_PREFIXES) or path == "/v1":
            return self.api
        return self.web

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.app_for(scope.get("path", "/"))(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self._stack = contextlib.AsyncExitStack()
                    for app in filter(None, (self.api, self.web)):
                        await self._stack.enter_async_context(app.router.lifespan_context(app))
                except Exception as exc:
                    log.exception("the API or the web UI failed to start")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._stack is not None:
                    await self._stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
