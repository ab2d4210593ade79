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
