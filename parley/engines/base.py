"""The engine seam: the one interface every inference backend implements.

An engine turns a `GenerationRequest` (prompt text or token ids plus sampling parameters)
into a stream of `GenerationChunk`s; it also counts tokens, embeds text and describes its
model. Chat templates, HTTP and everything else live above this seam.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.errors import ParleyError
from parley.models.source import ModelSource

FinishReason = Literal["stop", "length"]


class GuidedDecoding(BaseModel):
    """Constrain the output to a structure (enforced token by token with a grammar)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["json_object", "json_schema"]
    json_schema: dict | None = None  # for json_schema

    @model_validator(mode="after")
    def _schema_given(self) -> GuidedDecoding:
        if self.kind == "json_schema" and not isinstance(self.json_schema, dict):
            raise ValueError("json_schema decoding needs a schema object")
        return self


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    repetition_penalty: float = Field(1.0, gt=0.0)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list, description="text that ends generation; never shown")
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=20, description="None: none; N: the chosen token's and the top N")
    guided: GuidedDecoding | None = None

    @model_validator(mode="after")
    def _no_empty_stop(self) -> SamplingParams:
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    # Chat templates render special tokens (BOS...) into the text already: then False.
    add_special_tokens: bool = True
    params: SamplingParams = Field(default_factory=SamplingParams)
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex)

    @model_validator(mode="after")
    def _exactly_one_prompt(self) -> GenerationRequest:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError("give exactly one of prompt and prompt_token_ids")
        if self.prompt == "" or self.prompt_token_ids == []:
            raise ValueError("the prompt is empty")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class GenerationChunk(BaseModel):
    """One step of a stream: new text (never a split character, never part of a stop string)."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when asked for
    finish_reason: FinishReason | None = None
    usage: Usage | None = None  # on the last chunk


class GenerationResult(BaseModel):
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason
    usage: Usage


class EmbeddingResult(BaseModel):
    embeddings: list[list[float]]
    prompt_tokens: int


class ModelInfo(BaseModel):
    name: str
    engine: str
    context_length: int
    chat_template: str | None = None  # the model's own (tokenizer) template, if any
    bos_token: str | None = None
    eos_token: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    num_parameters: int | None = None


class EngineStats(BaseModel):
    """What the engine has done so far; `parley` reports these and tests assert on them."""

    requests_finished: int = 0
    running: int = 0  # sequences in the decoding batch at the time of the snapshot
    waiting: int = 0  # requests queued, not yet admitted
    decode_steps: int = 0
    decode_tokens: int = 0  # sum over steps of the batch size
    max_batch_size_seen: int = 0
    prefill_batches: int = 0
    joined_running_batch: int = 0  # requests admitted while others were mid-decode

    @property
    def mean_batch_size(self) -> float:
        return self.decode_tokens / self.decode_steps if self.decode_steps else 0.0


class RequestFailedError(ParleyError):
    """The engine failed on one request (or on the batch step it was decoding in) and goes on
    serving the others: the model ran out of memory on a long prompt, raised on an input...
    The message names the stage and the cause, e.g. "the model failed on this prompt:
    RuntimeError: CUDA out of memory..."."""

    def __init__(self, stage: str, cause: BaseException):
        # Only the text is kept: the cause's traceback would hold the failed step's tensors alive.
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")


class EngineOptions(BaseModel):
    """Options common to local engines; each engine uses those that apply to it."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = None
    device: Literal["auto", "cpu", "cuda", "mps", "xpu"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    load_8bit: bool = False
    num_gpus: int = Field(1, ge=1)
    max_gpu_memory: str | None = None  # per GPU, e.g. "13GiB"
    cpu_offloading: bool = False
    max_batch_size: int = Field(32, ge=1)
    trust_remote_code: bool = False
    # llama.cpp
    n_ctx: int | None = Field(None, ge=16)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int = Field(0, ge=-1)


class Engine(ABC):
    """An inference backend. Implementations must batch concurrent requests internally."""

    name: str = "engine"
    # What the engine does beyond plain sampling: "logprobs", "penalties" (presence and
    # frequency), "guided" (constrained decoding: structured output, forced tool calls).
    features: frozenset[str] = frozenset()

    @classmethod
    def create(cls, source: ModelSource, options: EngineOptions) -> Engine:
        """Build the engine for a resolved model source (what `--engine NAME` calls)."""
        raise NotImplementedError(f"engine {cls.name!r} cannot be created from a model path")

    @abstractmethod
    def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream a generation. Closing the iterator early cancels the request."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        text, ids, logprobs, last = [], [], [], None
        async for chunk in self.generate_stream(request):
            text.append(chunk.text)
            ids.extend(chunk.token_ids)
            logprobs.extend(chunk.logprobs or [])
            last = chunk
        assert last is not None and last.finish_reason is not None and last.usage is not None
        return GenerationResult(text="".join(text), token_ids=ids, finish_reason=last.finish_reason, usage=last.usage,
                                logprobs=logprobs if request.params.logprobs is not None else None)

    @abstractmethod
    async def count_tokens(self, text: str, add_special_tokens: bool = True) -> int: ...

    @abstractmethod
    async def embed(self, texts: list[str]) -> EmbeddingResult: ...

    @property
    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    def stats(self) -> EngineStats:
        return EngineStats()

    async def aclose(self) -> None:
        """Stop background work; in-flight requests end with EngineClosedError."""
