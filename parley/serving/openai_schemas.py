"""OpenAI's request and response bodies for /v1/models, chat, completions and embeddings.

Requests list every field OpenAI documents, so unknown fields are refused the way OpenAI refuses
them ("Unrecognized request argument"), while documented fields we do not act on (metadata,
store, service_tier...) are accepted and ignored as OpenAI would for a model without them.
Fields with an effect parley cannot give yet are refused with a clear 400 by the API.

Every list and number a client sends is bounded (OpenAI's own limits where it has them), so one
request cannot flood the workers; a request beyond a bound is a 400 that names the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_MESSAGES = 2048  # OpenAI's
MAX_STOP_SEQUENCES = 16  # OpenAI allows 4; lm-evaluation-harness and FastChat clients send more
MAX_STOP_CHARS = 256
MAX_N = 128  # OpenAI's
MAX_PROMPTS = 128  # strings in one completions request
MAX_CHOICES = 128  # n × prompts: the worker streams one request opens
MAX_TOP_LOGPROBS = 20  # OpenAI's
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's, for the legacy completions
MAX_TOOLS = 128  # OpenAI's
MAX_STOP_TOKEN_IDS = 64
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's
MAX_EMBEDDING_INPUT_CHARS = 65536
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a 64-bit signed integer, as OpenAI's

StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(max_length=1_000_000)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Request(BaseModel):
    # Strict, as OpenAI is: `max_tokens: true`, `"temperature": "0.5"` or `max_tokens: 5.0` are 400s, not 1, 0.5, 5.
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI ignores unknown keys inside a message

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class _SamplingExtensions(_Request):
    """Sampling knobs beyond OpenAI's that vLLM and FastChat clients send."""

    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)  # -1 or 0: off
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    ignore_eos: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)


class _GenerationRequest(_SamplingExtensions):
    """Fields chat and completions share."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: Stop | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    seed: Seed | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[dict] | None = None
    function_call: Any = None
    response_format: dict | None = None
    # Accepted and ignored, as OpenAI does where they do not apply.
    metadata: dict | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict | None = None
    prediction: dict | None = None
    web_search_options: dict | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


class CompletionRequest(_GenerationRequest):
    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)] | TokenIds \
        | Annotated[list[TokenIds], Field(max_length=MAX_PROMPTS)]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(_Request):
    model: str
    input: Annotated[str, Field(max_length=MAX_EMBEDDING_INPUT_CHARS)] \
        | Annotated[list[Annotated[str, Field(max_length=MAX_EMBEDDING_INPUT_CHARS)]], Field(max_length=MAX_EMBEDDING_INPUTS)] \
        | TokenIds | Annotated[list[TokenIds], Field(max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens = self.prompt_tokens + self.completion_tokens


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "parley"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
