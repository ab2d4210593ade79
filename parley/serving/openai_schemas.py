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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from parley.conversation.output_constraints import ToolPlan, guided_from_response_format
from parley.engines.base import (
    FinishReason,
    GenerationRequest,
    Message,
    MinP,
    Penalty,
    RepetitionPenalty,
    SamplingParams,
    Temperature,
    TokenId,
    TokenLogprob,
    TopK,
    TopP,
)
from parley.errors import InvalidRequestError

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

    @field_validator("role")
    @classmethod
    def _not_function(cls, role: str) -> str:
        if role == "function":
            raise ValueError("the 'function' role is deprecated; use tool messages")
        return role

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list) and any(p.type != "text" for p in content):
            raise ValueError("only text content parts are supported")
        return content

    def to_message(self) -> Message:
        content = "".join(p.text or "" for p in self.content) if isinstance(self.content, list) else self.content or ""
        return Message(role="system" if self.role == "developer" else self.role, content=content,
                       tool_calls=self.tool_calls or None, tool_call_id=self.tool_call_id if self.role == "tool" else None)


class _SamplingExtensions(_Request):
    """Sampling knobs beyond OpenAI's that vLLM and FastChat clients send."""

    top_k: TopK | None = None  # -1 or 0: off
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)


class _GenerationRequest(_SamplingExtensions):
    """Fields chat and completions share."""

    model: str
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    seed: Seed | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """The sampling parameters this request asks for: each value it gives, else SamplingParams' default
        (the one defaults table). Every knob is named here once, and only here."""
        given = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                 "repetition_penalty": self.repetition_penalty, "presence_penalty": self.presence_penalty,
                 "frequency_penalty": self.frequency_penalty, "max_new_tokens": max_tokens, "stop": self.stop,
                 "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos, "logprobs": logprobs}
        return SamplingParams(**{k: v for k, v in given.items() if v is not None})

    def _refuse(self, checks: dict[str, bool]) -> None:
        for field, refused in checks.items():
            if refused:
                raise UnsupportedField(field)


class UnsupportedField(ValueError):
    """A documented OpenAI field whose effect parley cannot give yet: a 400 naming it."""

    def __init__(self, field: str, message: str | None = None):
        super().__init__(message or f"'{field}' is not supported by this server yet")
        self.field = field


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
    # vLLM's extension: the reply continues the last message (the assistant's) instead of starting a new one.
    continue_final_message: bool = False
    # Accepted and ignored, as OpenAI does where they do not apply.
    metadata: dict | None = None
    store: bool | None = None
    service_tier: str | None = None
    # How hard a reasoning model thinks; what it does on each engine: README, "Reasoning models".
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict | None = None
    prediction: dict | None = None
    web_search_options: dict | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def to_generation_request(self, request_id: str) -> GenerationRequest:
        """parley's request for this chat completion (one choice; `n` choices are n of them, see `seeds`)."""
        self._refuse({"functions": bool(self.functions), "function_call": self.function_call is not None,
                      "logit_bias": bool(self.logit_bias), "audio": bool(self.audio)})
        if self.top_logprobs is not None and not self.logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs needs logprobs set to true")
        if not self.tools and self.tool_choice not in (None, "none", "auto"):
            raise UnsupportedField("tool_choice", "tool_choice needs tools")
        if self.continue_final_message and (self.messages[-1].role != "assistant" or self.tools):
            raise UnsupportedField("continue_final_message", "continue_final_message needs messages that end with "
                                                             "the assistant's message, and no tools")
        # The bounds of schemas and tools, checked before anything else touches them (a schema nested hundreds
        # deep must be a 400, not a serializer's recursion error).
        for field, check in (("response_format", lambda: guided_from_response_format(self.response_format)),
                             ("tools", lambda: self.tools and ToolPlan.of(self.tools, self.tool_choice))):
            try:
                check()
            except InvalidRequestError as exc:
                raise UnsupportedField(field, str(exc)) from None
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return GenerationRequest(
            model=self.model, messages=[m.to_message() for m in self.messages], request_id=request_id,
            params=self.sampling_params(self.max_completion_tokens or self.max_tokens, logprobs),
            response_format=self.response_format or None, tools=self.tools or None,
            tool_choice=self.tool_choice if self.tools else None, continue_final_message=self.continue_final_message,
            reasoning_effort=self.reasoning_effort)


class CompletionRequest(_GenerationRequest):
    """A prompt is text, or token ids (taken as they are: no BOS is added); a list of either is several prompts.
    With `echo` and `logprobs`, the reply's log-probabilities start with the prompt's (what lm-evaluation-harness
    reads); `max_tokens` 0 generates nothing (with echo: the reply is the prompt)."""

    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)] | TokenIds \
        | Annotated[list[TokenIds], Field(max_length=MAX_PROMPTS)]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each text or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(t, int) for t in self.prompt):
            return [self.prompt]  # type: ignore[list-item]  # one prompt of token ids
        return list(self.prompt)  # type: ignore[arg-type]

    def to_generation_requests(self, request_id: str) -> list[GenerationRequest]:
        """parley's request for each prompt (one choice each)."""
        self._refuse({"logit_bias": bool(self.logit_bias), "suffix": bool(self.suffix),
                      "best_of": self.best_of not in (None, 1)})
        prompts = self.prompts()
        if not prompts or any(not p for p in prompts):
            raise UnsupportedField("prompt", "prompt must not be empty")
        if (self.n or 1) * len(prompts) > MAX_CHOICES:
            raise UnsupportedField("n", f"n × the number of prompts is {(self.n or 1) * len(prompts)}; one request "
                                        f"may ask for at most {MAX_CHOICES} choices")
        params = self.sampling_params(self.max_tokens, self.logprobs)
        return [GenerationRequest(model=self.model, echo=bool(self.echo), params=params, request_id=request_id,
                                  **({"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p}))
                for p in prompts]


class EmbeddingRequest(_Request):
    model: str
    input: Annotated[str, Field(max_length=MAX_EMBEDDING_INPUT_CHARS)] \
        | Annotated[list[Annotated[str, Field(max_length=MAX_EMBEDDING_INPUT_CHARS)]], Field(max_length=MAX_EMBEDDING_INPUTS)] \
        | TokenIds | Annotated[list[TokenIds], Field(max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def seeds(seed: int | None, n: int) -> list[int | None]:
    """The seeds of n choices: distinct, reproducible when a seed is given (wrapping around within 64 bits)."""
    span = SEED_MAX - SEED_MIN + 1
    return [None if seed is None else (seed + i - SEED_MIN) % span + SEED_MIN for i in range(n)]


def with_seed(request: GenerationRequest, seed: int | None) -> GenerationRequest:
    return request.model_copy(update={"params": request.params.model_copy(update={"seed": seed})})


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens = self.prompt_tokens + self.completion_tokens


# -- responses: what the API answers, as OpenAI's types ------------------------------------------


class _Response(BaseModel):
    """Fields that are None are sent as null, as OpenAI sends them, except those listed in `_omit_if_none`."""

    _omit_if_none: frozenset[str] = frozenset()

    @model_serializer(mode="wrap")
    def _omitting(self, handler):
        data = handler(self)
        for name in self._omit_if_none:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class ModelCard(_Response):
    # parley's extension, for assistants only (omitted for plain models): what the picker of a client shows.
    _omit_if_none = frozenset({"name", "description", "base_model"})

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "parley"
    name: str | None = None
    description: str | None = None
    base_model: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class FunctionCall(_Response):
    _omit_if_none = frozenset({"name"})

    name: str | None = None
    arguments: str = ""


class ToolCall(_Response):
    """A tool call; in a stream each delta has its `index`, and only the first its id, type and name."""

    _omit_if_none = frozenset({"index", "id", "type"})

    index: int | None = None
    id: str | None = None
    type: Literal["function"] | None = "function"
    function: FunctionCall


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: None = None


class AssistantMessage(_Response):
    # `reasoning_content`: a reasoning model's thinking, apart from its answer (vLLM's and DeepSeek's field); absent
    # for other models.
    _omit_if_none = frozenset({"tool_calls", "reasoning_content"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class _Generated(BaseModel):
    """What every completion and streamed event starts with; each kind names its `object`."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: None = None


class SourceOut(BaseModel):
    """A chunk of an assistant's knowledge that the reply was given, as `[n]` (parley's extension)."""

    n: int
    filename: str
    page: int | None = None
    heading: str | None = None
    text: str
    score: float | None = None  # cosine similarity to the question
    document_id: int
    collection_id: str


class _WithSources(_Response):
    """`sources`: parley's extension for replies of an assistant with knowledge; absent otherwise, so that OpenAI's
    clients see exactly OpenAI's shape (the openai SDK keeps it in `model_extra`)."""

    _omit_if_none = frozenset({"sources"})
    sources: list[SourceOut] | None = None


class ChatCompletion(_WithSources, _Generated):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatDelta(_Response):
    _omit_if_none = frozenset({"role", "content", "reasoning_content", "tool_calls"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_WithSources, _Generated):
    """One event of a streamed chat completion; with stream_options.include_usage every chunk has `usage`
    (null until the last, which has no choices)."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions shape of log-probabilities. With echo, the first entry is the prompt's first token's,
    which nothing precedes: its logprob and top_logprobs are null, as OpenAI sent them."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    @classmethod
    def of(cls, entries: list[TokenLogprob], prompt_first: bool = False, offset: int = 0) -> CompletionLogprobs:
        """`prompt_first`: `entries` start with the prompt's first token's (GenerationRequest.prompt_logprobs);
        `offset`: where in the choice's text the first entry's token starts (in a stream, after earlier events')."""
        offsets, position = [], offset
        for e in entries:
            offsets.append(position)
            position += len(e.token)
        logprobs: list[float | None] = [e.logprob for e in entries]
        tops: list[dict[str, float] | None] = [{t.token: t.logprob for t in e.top_logprobs} for e in entries]
        if prompt_first and entries:
            logprobs[0] = tops[0] = None
        return cls(tokens=[e.token for e in entries], token_logprobs=logprobs, top_logprobs=tops, text_offset=offsets)

    @property
    def text_length(self) -> int:
        """How far into the choice's text these entries reach (their tokens' characters)."""
        return sum(len(t) for t in self.tokens)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(_Generated):
    """A completion, or (as `text_completion` events) one event of a streamed one."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string with encoding_format "base64"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
