"""FastChat's controller/worker wire formats, as typed schemas.

Field names and shapes are FastChat's, so FastChat workers can register with a parley
controller and FastChat's API server can use parley's controller and workers.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from parley.engines.base import (
    MAX_MESSAGES,
    MAX_STOPS,
    GenerationChunk,
    StopText,
    TokenId,
)

# FastChat's defaults: a worker sends a heartbeat every 45 s; the controller forgets a worker
# it has not heard from for 90 s.
HEART_BEAT_INTERVAL_S = 45.0
HEART_BEAT_EXPIRATION_S = 90.0


# What a worker may report about itself (a registration outside these bounds is refused):
MAX_MODEL_NAME_CHARS = 256
MAX_MODELS_PER_WORKER = 256
MAX_WORKER_SPEED = 1e6
MAX_QUEUE_LENGTH = 1_000_000


def _model_name(name: str) -> str:
    if not name or name != name.strip() or len(name) > MAX_MODEL_NAME_CHARS \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"a model name must be 1 to {MAX_MODEL_NAME_CHARS} characters, without control characters "
                         "or surrounding spaces")
    return name


def _worker_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048 \
            or parts.query or parts.fragment or any(c.isspace() for c in url):
        raise ValueError("a worker name must be the worker's http(s) URL, e.g. http://10.0.0.5:21002")
    return url


ModelName = Annotated[str, AfterValidator(_model_name)]
WorkerURL = Annotated[str, AfterValidator(_worker_url)]


class WorkerStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_names: list[str]
    speed: float = 1.0
    queue_length: int = 0


class ReportedStatus(WorkerStatus):
    """A worker's status as the controller accepts it."""

    model_names: list[ModelName] = Field(min_length=1, max_length=MAX_MODELS_PER_WORKER)
    speed: float = Field(1.0, gt=0, le=MAX_WORKER_SPEED)
    queue_length: int = Field(0, ge=0, le=MAX_QUEUE_LENGTH)


class RegisterWorkerRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    worker_name: WorkerURL  # the worker's base URL, e.g. http://10.0.0.5:21002
    check_heart_beat: bool = True
    worker_status: ReportedStatus | None = None
    multimodal: bool = False


class HeartBeatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    worker_name: str
    queue_length: int = Field(0, ge=0, le=MAX_QUEUE_LENGTH)


class GetWorkerAddressRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str


class ListModelsResponse(BaseModel):
    models: list[str] = Field(default_factory=list)


class WorkerAddressResponse(BaseModel):
    address: str  # "" when no worker serves the model


class HeartBeatResponse(BaseModel):
    exist: bool


class KnownModelsResponse(BaseModel):
    served: list[str]
    known: list[str]


class WorkerFailureReport(BaseModel):
    worker_name: str
    reason: str | None = None


class ErrorCode:
    """FastChat's error codes (fastchat/constants.py), carried in `error_code` of FastChat worker replies and in
    `error.code` of parley's native stream."""

    VALIDATION_TYPE_ERROR = 40001
    PARAM_OUT_OF_RANGE = 40302
    CONTEXT_OVERFLOW = 40303
    ENGINE_OVERLOADED = 42903
    INTERNAL_ERROR = 50001


# -- parley's native generation stream ------------------------------------------------------------
#
# `POST /parley/generate` takes a `parley.engines.base.GenerationRequest` as JSON, as the API built
# it, and answers `application/x-ndjson`: one `StreamFrame` per line, each a delta (new text, the
# log-probabilities of its tokens, tool-call deltas; usage and finish reason on the last), or an
# error. Nothing is cumulative: the bytes grow with the reply, not with its square.

NATIVE_STREAM_PATH = "/parley/generate"
NATIVE_PROTOCOL = 2  # /model_details' parley.protocol: the worker speaks the native stream


class StreamError(BaseModel):
    code: int  # an ErrorCode
    message: str


class StreamFrame(GenerationChunk):
    """One line of the native stream: a `GenerationChunk`, or an error that ends the stream."""

    error: StreamError | None = None


# -- parley's tokenizer endpoints: the model's own tokenizer, for the API's /tokenize, /detokenize, /tokenizer_info
#
# A worker answers each with its reply (200) or with `TokenizerError` (4xx/5xx: the code says why).

TOKENIZE_PATH = "/parley/tokenize"
DETOKENIZE_PATH = "/parley/detokenize"
TOKENIZER_INFO_PATH = "/parley/tokenizer_info"
MAX_DETOKENIZE_IDS = 1_000_000


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    add_special_tokens: bool = True  # BOS and the like, where the model's tokenizer adds them


class TokenizeReply(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int  # the model's context window


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenId] = Field(max_length=MAX_DETOKENIZE_IDS)


class DetokenizeReply(BaseModel):
    prompt: str  # the text of the ids, special tokens written out


class TokenizerInfo(BaseModel):
    """What lm-evaluation-harness reads of a served model's tokenizer (vLLM's /tokenizer_info)."""

    eos_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None  # None: the engine does not say
    chat_template: str | None = None
    model_max_length: int


class TokenizerError(BaseModel):
    error: StreamError


# -- FastChat's worker protocol (parley.serving.fastchat_worker adapts it) -------------------------

class GenerateParams(BaseModel):
    """What FastChat's `/worker_generate_stream` accepts (its gen_params), plus parley's extensions: `messages`
    (the worker renders them with its own chat template), `seed`, `min_p`, logprobs, tools and response_format.
    Defaults are FastChat's where they differ from the engine's."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict] | None = Field(None, max_length=MAX_MESSAGES)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # FastChat: -1 disables
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_new_tokens: int | None = None  # None: up to the end of the context window
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = None
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOPS)
    echo: bool = False
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch takes
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; N: the chosen token's and the N likeliest
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    request_id: str | None = Field(None, max_length=100)  # the API's id of the request, for the worker's log


class WorkerChunk(BaseModel):
    """One `\\0`-terminated JSON object of a FastChat worker stream; `text` is cumulative, as in FastChat."""

    text: str
    error_code: int = 0
    usage: dict | None = None
    finish_reason: str | None = None
    logprobs: None = None  # FastChat's field; parley sends its own below
    # parley's extensions: log-probabilities of the tokens new in this chunk (OpenAI's
    # chat shape), and the tool calls so far (cumulative, like `text`).
    token_logprobs: list[dict] | None = None
    tool_calls: list[dict] | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    request_id: str | None = Field(None, max_length=100)


class CountTokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
