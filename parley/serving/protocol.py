"""FastChat's controller/worker wire formats, as typed schemas.

Field names and shapes are FastChat's, so FastChat workers can register with a parley
controller and FastChat's API server can use parley's controller and workers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# FastChat's defaults: a worker sends a heartbeat every 45 s; the controller forgets a worker
# it has not heard from for 90 s.
HEART_BEAT_INTERVAL_S = 45.0
HEART_BEAT_EXPIRATION_S = 90.0


class WorkerStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_names: list[str]
    speed: float = 1.0
    queue_length: int = 0


class RegisterWorkerRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    worker_name: str  # the worker's base URL, e.g. http://10.0.0.5:21002
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None
    multimodal: bool = False


class HeartBeatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    worker_name: str
    queue_length: int = 0


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
    """FastChat's error codes (fastchat/constants.py), carried in `error_code` of worker replies."""

    VALIDATION_TYPE_ERROR = 40001
    PARAM_OUT_OF_RANGE = 40302
    CONTEXT_OVERFLOW = 40303
    ENGINE_OVERLOADED = 42903
    INTERNAL_ERROR = 50001


class GenerateParams(BaseModel):
    """What `/worker_generate_stream` accepts: FastChat's gen_params, plus `messages` (parley's
    extension: the worker renders them with its own chat template) and `seed`."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[dict] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # FastChat: -1 disables
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_new_tokens: int | None = None  # None: up to the end of the context window
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    echo: bool = False
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; N: the chosen token's and the N likeliest
    # parley's extensions, in OpenAI's shapes:
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None


class WorkerChunk(BaseModel):
    """One `\\0`-terminated JSON object of a worker stream; `text` is cumulative, as in FastChat."""

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


class CountTokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
