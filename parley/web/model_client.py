"""Replies for the web UI, streamed from the workers the controller lists (the same path as the API)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
from pydantic import BaseModel, Field

from parley.serving.api_errors import APIError
from parley.serving.cluster_auth import auth_headers
from parley.serving.gateway import WorkerGateway


class ReplyParams(BaseModel):
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, le=32768)


class ReplyProgress(BaseModel):
    text: str = ""
    done: bool = False
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_s: float | None = None
    latency_s: float | None = None


class ModelClient:
    def __init__(self, controller_address: str, cluster_secret: str | None = None):
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), headers=auth_headers(cluster_secret))
        self.gateway = WorkerGateway(self.http, controller_address, clamp_max_tokens=True)

    async def list_models(self) -> list[str]:
        try:
            return sorted(await self.gateway.list_models())
        except (APIError, httpx.HTTPError):
            return []

    async def stream(self, model: str, messages: list[dict], params: ReplyParams) -> AsyncIterator[ReplyProgress]:
        """Progress of one reply: the text so far, then a last item with `done` (and `error`, if it failed)."""
        started = time.perf_counter()
        progress = ReplyProgress()
        payload = {"model": model, "messages": messages, "temperature": params.temperature, "top_p": params.top_p,
                   "max_new_tokens": params.max_tokens}
        try:
            async for chunk in self.gateway.generate_stream(model, payload):
                if chunk.get("error_code"):
                    progress.error = chunk.get("text") or "the worker reported an error"
                    break
                if chunk.get("text") and progress.first_token_s is None:
                    progress.first_token_s = time.perf_counter() - started
                progress.text = chunk.get("text", progress.text)
                if chunk.get("usage"):
                    progress.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    progress.completion_tokens = chunk["usage"].get("completion_tokens")
                progress.finish_reason = chunk.get("finish_reason") or progress.finish_reason
                yield progress
        except APIError as exc:
            progress.error = exc.message
        except httpx.HTTPError as exc:
            progress.error = f"the model server could not be reached ({type(exc).__name__})"
        progress.done = True
        progress.latency_s = time.perf_counter() - started
        yield progress

    async def aclose(self) -> None:
        await self.http.aclose()
