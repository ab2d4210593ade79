"""Replies for the web UI, streamed from the workers the controller lists (the same path as the API).

A reply is asked for as the API asks: an OpenAI chat request, turned into parley's request by the same
method, so the same rules (bounds, defaults) hold for the web UI's chat as for the API's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
from pydantic import BaseModel, Field

from parley.serving.cluster_auth import auth_headers
from parley.serving.cluster_client import Cluster, ClusterClient
from parley.serving.cluster_errors import ClusterError
from parley.serving.openai_schemas import ChatCompletionRequest, new_id


class ReplyParams(BaseModel):
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, le=32768)


class ReplyProgress(BaseModel):
    text: str = ""  # the answer so far
    reasoning: str = ""  # a reasoning model's thinking so far (its `<think>` block, as the worker split it out)
    done: bool = False
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # as the model reported them at the end
    generated_tokens: int = 0  # streamed so far (what a reply stopped early is charged)
    first_token_s: float | None = None
    latency_s: float | None = None


class ModelClient:
    def __init__(self, controller_address: str, cluster_secret: str | None = None, hidden: tuple[str, ...] = (),
                 cluster: Cluster | None = None):
        """`cluster`: where the models are (default: the controller at `controller_address`); it should cut a
        `max_tokens` beyond a model's window to the window, as the web UI's slider asks."""
        self.hidden = frozenset(hidden)  # served, but not for chat (the embedding model)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), headers=auth_headers(cluster_secret))
        self.cluster: Cluster = cluster or ClusterClient(self.http, controller_address, clamp_max_tokens=True)

    async def list_models(self) -> list[str]:
        """The models the controller lists now; none when it cannot be reached."""
        return (await self.models())[0]

    async def models(self) -> tuple[list[str], bool]:
        """The models the controller lists now, and whether it could be asked at all."""
        try:
            return sorted(m for m in await self.cluster.list_models() if m not in self.hidden), True
        except (ClusterError, httpx.HTTPError):
            return [], False

    async def stream(self, model: str, messages: list[dict], params: ReplyParams,
                     continue_final: bool = False) -> AsyncIterator[ReplyProgress]:
        """Progress of one reply: the text (and reasoning) so far, then a last item with `done` (and `error`, if it
        failed).
        `continue_final`: the reply goes on with the last message (the assistant's), which the text excludes."""
        started = time.perf_counter()
        progress = ReplyProgress()
        request = ChatCompletionRequest.model_validate({
            "model": model, "messages": messages, "temperature": params.temperature, "top_p": params.top_p,
            "max_tokens": params.max_tokens, "continue_final_message": continue_final}).to_generation_request(new_id("web"))
        request.return_token_ids = True  # counted as they stream
        try:
            async for chunk in self.cluster.generate_stream(model, request):
                if (chunk.text or chunk.reasoning) and progress.first_token_s is None:
                    progress.first_token_s = time.perf_counter() - started  # a thought is a token too
                progress.text += chunk.text
                progress.reasoning += chunk.reasoning
                progress.generated_tokens += len(chunk.token_ids)
                if chunk.usage is not None:
                    progress.prompt_tokens = chunk.usage.prompt_tokens
                    progress.completion_tokens = chunk.usage.completion_tokens
                progress.finish_reason = chunk.finish_reason or progress.finish_reason
                yield progress
        except ClusterError as exc:
            progress.error = exc.message
        except httpx.HTTPError as exc:
            progress.error = f"the model server could not be reached ({type(exc).__name__})"
        progress.done = True
        progress.latency_s = time.perf_counter() - started
        yield progress

    async def aclose(self) -> None:
        await self.http.aclose()
