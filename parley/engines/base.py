"""The engine seam: the one interface every inference backend implements.

An engine turns a `GenerationRequest` (prompt text or token ids plus sampling parameters)
into a stream of `GenerationChunk`s; it also counts tokens, embeds text and describes its
model. Chat templates, HTTP and everything else live above this seam.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parley.errors import InvalidRequestError, ParleyError
from parley.models.source import ModelSource

FinishReason = Literal["stop", "length", "tool_calls"]

# -- the request: one type from the API to the engine --------------------------------------------
#
# The bounds of each value are stated once, here, as the types below; the OpenAI request types
# (parley.serving.openai_schemas) use the same ones. The defaults table is SamplingParams' own
# field defaults: a value the request leaves out takes the default there, and nowhere else.

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="0: greedy decoding")]
TopP = Annotated[float, Field(ge=0.0, le=1.0, description="nucleus sampling; 0 keeps only the likeliest token")]
TopK = Annotated[int, Field(ge=-1, le=2**31 - 1, description="0 or -1: off")]
MinP = Annotated[float, Field(ge=0.0, le=1.0, description="drop tokens below min_p × the likeliest one's probability")]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=100.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]  # presence and frequency
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
LogprobCount = Annotated[int, Field(ge=0, le=20, description="the chosen token's and the N likeliest")]
MaxTokens = Annotated[int, Field(ge=0, description="0: nothing is generated (with echo and logprobs: the prompt's "
                                                    "log-probabilities only)")]
MAX_STOPS = 64  # a client's stop strings plus the chat template's
StopText = Annotated[str, Field(max_length=1024)]
MAX_MESSAGES = 4096


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
    """How tokens are chosen and when generation ends. The field defaults are the defaults table."""

    model_config = ConfigDict(extra="forbid")

    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    max_new_tokens: MaxTokens | None = Field(None, description="None: up to the end of the context window")
    stop: list[StopText] = Field(default_factory=list, max_length=MAX_STOPS,
                                 description="text that ends generation; never shown")
    stop_token_ids: list[TokenId] = Field(default_factory=list, max_length=MAX_STOPS)
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch takes
    ignore_eos: bool = False
    logprobs: LogprobCount | None = Field(None, description="None: none; N: the chosen token's and the top N")
    guided: GuidedDecoding | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _normalized(self) -> SamplingParams:
        # One meaning for each value, decided here and nowhere else.
        self.stop = [s for s in dict.fromkeys(self.stop) if s]  # "" would end every reply at once
        if self.temperature <= 1e-5:
            self.temperature = 0.0
        if self.top_p == 0.0:  # only the likeliest token
            self.temperature, self.top_p = 0.0, 1.0
        if self.top_k < 0:
            self.top_k = 0
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def with_stops(self, stop: list[str], stop_token_ids: list[int]) -> SamplingParams:
        """These parameters with a chat template's stops added (no bound: the template's are trusted)."""
        return self.model_copy(update={
            "stop": self.stop + [s for s in stop if s and s not in self.stop],
            "stop_token_ids": self.stop_token_ids + [i for i in stop_token_ids if i not in self.stop_token_ids]})


class Message(BaseModel):
    """One turn of a conversation, as the engine's chat template renders it."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class GenerationRequest(BaseModel):
    """What the API asks of a worker and the worker of its engine, unchanged: the conversation (or a prompt),
    the sampling parameters, and what the output must look like."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # the name it was asked under (an engine serving several models routes by it)
    messages: list[Message] | None = Field(None, max_length=MAX_MESSAGES)
    prompt: str | None = None
    prompt_token_ids: list[TokenId] | None = None
    # Chat templates render special tokens (BOS...) into the text already: then False.
    add_special_tokens: bool = True
    echo: bool = False  # the reply starts with the prompt
    return_token_ids: bool = False  # the native stream carries each delta's token ids too
    params: SamplingParams = Field(default_factory=SamplingParams)
    # Output constraints, in OpenAI's shapes (the engine's chat layer turns them into a grammar):
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    # The reply continues the last message (an assistant's, e.g. one cut at its token limit) instead of
    # starting a new one: the prompt ends inside that message, without its end-of-turn.
    continue_final_message: bool = False
    # How hard a reasoning model thinks (OpenAI's values); what each engine does with it: README, "Reasoning models".
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=100)

    @property
    def prompt_logprobs(self) -> int | None:
        """With `echo` and `params.logprobs` (N): the reply's log-probabilities start with one entry per prompt token
        (each with the N likeliest tokens at its place), before the generated tokens' (what lm-evaluation-harness
        reads). The first prompt token has nothing before it: its entry has logprob 0.0 and no alternatives, and
        the API shows null there, as OpenAI did. None: not asked for."""
        return self.params.logprobs if self.echo else None

    @model_validator(mode="after")
    def _exactly_one_prompt(self) -> GenerationRequest:
        given = [x for x in (self.messages, self.prompt, self.prompt_token_ids) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of messages, prompt and prompt_token_ids")
        if not given[0]:
            raise ValueError("the prompt is empty")
        if self.tools and self.messages is None:
            raise ValueError("tools need messages, not a prompt")
        if self.continue_final_message and not (self.messages and self.messages[-1].role == "assistant"):
            raise ValueError("continue_final_message needs messages that end with the assistant's message")
        if self.continue_final_message and self.tools:
            raise ValueError("continue_final_message cannot be used with tools")
        return self


class ToolCallDelta(BaseModel):
    """A streamed piece of a tool call, in OpenAI's shape: the first piece of a call has its id, type and
    name; later ones add argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict


class ToolCallsSoFar:
    """Whole tool calls, added up from their deltas, in OpenAI's shape (id, type, function name and arguments)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict] = {}

    def add(self, deltas: list[ToolCallDelta] | None) -> None:
        for d in deltas or []:
            call = self._calls.setdefault(d.index, {"id": d.id, "type": "function",
                                                    "function": {"name": d.function.get("name"), "arguments": ""}})
            call["function"]["arguments"] += d.function.get("arguments", "")

    def calls(self) -> list[dict]:
        """The calls so far, in order (copies: adding more deltas does not change them)."""
        return [dict(c, function=dict(c["function"])) for _, c in sorted(self._calls.items())]


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
    # The model's reasoning (the text inside a reasoning model's `<think>` markers), apart from `text`, the answer.
    reasoning: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when asked for
    tool_calls: list[ToolCallDelta] | None = None  # when tools were offered and the model calls them
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
    cached_prompt_tokens: int = 0  # prompt tokens not prefilled: their KV was reused from an earlier request
    threads: int = 0  # CPU threads decoding now, where the engine chooses them (llama.cpp); 0: not reported

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
    """What every engine is told by the command that starts it. Each engine's own options extend this class
    (parley.engines.engine_options) and become its command-line flags."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = None
    conv_template: str | None = None  # a named chat template instead of the model's own
    reasoning_parser: str | None = Field(None, description="read a reasoning model's thinking apart from its answer: "
                                         "think (aliases deepseek_r1, qwen3) or none (default: think for a model whose "
                                         "chat template or name is a reasoning model's)")

    chat_template: str | None = Field(None, description="a Jinja chat template file to render conversations with "
                                      "instead of the model's own", json_schema_extra={"metavar": "FILE"})

    @field_validator("chat_template")
    @classmethod
    def _template_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such chat template file: {value}")
        return value

    @field_validator("reasoning_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        from parley.conversation.reasoning import PARSERS

        if value is not None and value.lower() not in PARSERS:
            raise ValueError(f"unknown reasoning parser {value!r}; choose one of {', '.join(sorted(PARSERS))}")
        return value


class Engine(ABC):
    """An inference backend. Implementations must batch concurrent requests internally.

    An engine takes a `GenerationRequest` as the API built it and does all of it itself, or refuses
    what it cannot do with InvalidRequestError: engines that compute tokens render the conversation
    with a chat template (parley.engines.prompted), a forwarding engine sends it on as it is."""

    name: str = "engine"
    takes_model_path: bool = True  # False: the engine is configured by its options alone (the openai proxy)

    reasoning_parser: str | None = None  # EngineOptions.reasoning_parser (None: by the model's template and name)
    chat_template_text: str | None = None  # EngineOptions.chat_template's text (None: the model's own template)

    @classmethod
    def create(cls, source: ModelSource | None, options: EngineOptions) -> Engine:
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

    async def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The model's token ids for `text` (the API's /tokenize)."""
        raise InvalidRequestError(f"the {self.name} engine does not tokenize text for clients")

    async def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids, special tokens included (the API's /detokenize); ids outside the vocabulary are
        an InvalidRequestError."""
        raise InvalidRequestError(f"the {self.name} engine does not detokenize for clients")

    @abstractmethod
    async def embed(self, texts: list[str]) -> EmbeddingResult: ...

    @property
    @abstractmethod
    def model_info(self) -> ModelInfo: ...

    @property
    def chat_template_name(self) -> str | None:
        """The chat template this engine renders conversations with (None: its upstream renders them)."""
        return None

    def stats(self) -> EngineStats:
        return EngineStats()

    async def aclose(self) -> None:
        """Stop background work; in-flight requests end with EngineClosedError."""
