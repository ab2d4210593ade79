"""Where replies come from: a local engine, or a remote OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from pydantic import BaseModel, Field

from parley.engines.base import Engine, GenerationRequest, Message, SamplingParams
from parley.errors import ParleyError


class ChatParams(BaseModel):
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int | None = None


class ChatBackend(Protocol):
    model_name: str

    def stream(self, messages: list[dict], params: ChatParams) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class LocalBackend:
    """A model loaded in this process: the conversation goes to the engine as the API would send it (the
    engine renders it with its chat template)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model_name = engine.model_info.name

    async def stream(self, messages: list[dict], params: ChatParams) -> AsyncIterator[str]:
        request = GenerationRequest(messages=[Message.model_validate(m) for m in messages],
                                    params=SamplingParams(**params.model_dump()))
        async for chunk in self.engine.generate_stream(request):
            if chunk.text:
                yield chunk.text

    async def aclose(self) -> None:
        await self.engine.aclose()


class RemoteBackend:
    """Any OpenAI-compatible server (parley api, vLLM, Ollama, llama-server, hosted APIs)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None):
        import openai

        self._openai = openai
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=1)
        self.model_name = model

    async def stream(self, messages: list[dict], params: ChatParams) -> AsyncIterator[str]:
        extra = {"repetition_penalty": params.repetition_penalty} if params.repetition_penalty != 1.0 else None
        try:
            response = await self._client.chat.completions.create(
                model=self.model_name, messages=messages, stream=True, temperature=params.temperature,
                top_p=params.top_p, max_tokens=params.max_new_tokens, seed=params.seed, extra_body=extra,
            )
            async for event in response:
                if event.choices and event.choices[0].delta.content:
                    yield event.choices[0].delta.content
        except self._openai.APIConnectionError:
            raise ParleyError(f"cannot reach {self._client.base_url}; is the server running?") from None
        except self._openai.APIError as exc:
            raise ParleyError(f"the server answered with an error: {exc}") from None

    async def aclose(self) -> None:
        await self._client.close()
