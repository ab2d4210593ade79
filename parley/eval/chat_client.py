"""Chat completions from any OpenAI-compatible server (a hosted API, vLLM, parley), for evaluation.

Retries (connection errors, 408/409/429/5xx, with backoff) are the `openai` SDK's own; what fails
after them is raised as `ChatFailure` for the caller to record. Token usage is added up.
"""

from __future__ import annotations

import asyncio

import openai
from pydantic import BaseModel

from parley.openai_env import environment_key_for


class ChatFailure(Exception):
    """The server did not answer after the retries, or answered with an error."""


class TokenCount(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def line(self) -> str:
        return (f"{self.requests} requests, {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens "
                f"= {self.prompt_tokens + self.completion_tokens}")


class ChatClient:
    def __init__(self, model: str, base_url: str, api_key: str | None = None, retries: int = 3,
                 timeout_s: float = 600.0):
        self.model = model
        self.usage = TokenCount()
        key = api_key or environment_key_for(base_url) or "EMPTY"
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=retries, timeout=timeout_s)

    async def complete(self, messages: list[dict], temperature: float, max_tokens: int) -> str:
        try:
            reply = await self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=1)
        except (openai.APIError, asyncio.TimeoutError) as exc:
            raise ChatFailure(f"{type(exc).__name__}: {exc}") from exc
        self.usage.requests += 1
        if reply.usage:
            self.usage.prompt_tokens += reply.usage.prompt_tokens
            self.usage.completion_tokens += reply.usage.completion_tokens
        if not reply.choices or reply.choices[0].message.content is None:
            raise ChatFailure("the reply has no text")
        return reply.choices[0].message.content

    async def aclose(self) -> None:
        await self._client.close()
