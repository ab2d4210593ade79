"""The cluster client's errors: why a request could not be served, with the status an API answers it with."""

from __future__ import annotations

from parley.errors import ParleyError
from parley.serving.protocol import ErrorCode


class ClusterError(ParleyError):
    """A request the cluster could not serve. `status`, `code`, `type` and `param` are what an OpenAI-style API
    answers with."""

    status = 500
    code: str | None = "internal_error"
    type = "server_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ControllerUnavailable(ClusterError):
    status, code = 503, "service_unavailable"


class ModelNotFound(ClusterError):
    status, code, type = 404, "model_not_found", "invalid_request_error"


class ModelUnavailable(ClusterError):
    status, code = 503, "model_unavailable"


class WorkerFailed(ClusterError):
    """The worker could not be reached, refused this client, or stopped while answering."""

    status, code = 502, "worker_failed"


class WorkerTimeout(ClusterError):
    status, code = 504, "timeout"


class RequestRejected(ClusterError):
    """The worker (or its engine) refused the request: its parameters, its length, or the worker is full."""

    def __init__(self, message: str, status: int = 400, code: str | None = "invalid_parameter",
                 param: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message, param)
        self.status, self.code, self.type = status, code, type

    @classmethod
    def from_worker(cls, error_code: int, message: str) -> ClusterError:
        """A worker's error code (FastChat's) as the error it stands for."""
        if error_code == ErrorCode.CONTEXT_OVERFLOW:
            return cls(message, code="context_length_exceeded", param="messages")
        if error_code == ErrorCode.ENGINE_OVERLOADED:
            return cls(message, 429, "rate_limit_exceeded", type="rate_limit_error")
        if 40000 <= error_code < 50000:
            return cls(message)
        return cls(message, 500, "internal_error", type="server_error")
