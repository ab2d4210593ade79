"""How a worker's failures reach its clients: FastChat's error codes, and messages that say what is wrong with a
request but nothing of the worker's internals."""

from __future__ import annotations

import logging
import uuid
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from parley.errors import (
    ContextLengthError,
    InvalidPromptError,
    InvalidRequestError,
    ParleyError,
)
from parley.serving.protocol import ErrorCode

log = logging.getLogger("parley.worker")
T = TypeVar("T", bound=BaseModel)


class WorkerError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def request_id_of(raw: dict) -> str:
    given = raw.get("request_id")
    return given if isinstance(given, str) and 0 < len(given) <= 100 and given.isprintable() else f"wrk-{uuid.uuid4().hex[:16]}"


def validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" if err["loc"] else str(err["msg"])


def error_code_of(exc: Exception) -> int:
    """FastChat's error code for a failure: what the client is told, and what the worker's metrics count."""
    if isinstance(exc, WorkerError):
        return exc.code
    if isinstance(exc, ContextLengthError):
        return ErrorCode.CONTEXT_OVERFLOW
    if isinstance(exc, InvalidPromptError):
        return ErrorCode.VALIDATION_TYPE_ERROR
    if isinstance(exc, InvalidRequestError):
        return ErrorCode.PARAM_OUT_OF_RANGE
    # an upstream's 429 stays a 429
    return ErrorCode.ENGINE_OVERLOADED if getattr(exc, "status", None) == 429 else ErrorCode.INTERNAL_ERROR


def failure_for_client(exc: Exception, request_id: str, what: str) -> tuple[int, str]:
    """The error code and message a client sees for a failed request. A fault of the request says what is wrong;
    anything else (an engine bug, CUDA, an upstream's failure) goes to this log in full, under the request id
    the client is told, and the client learns no internals."""
    code = error_code_of(exc)
    if isinstance(exc, WorkerError | InvalidRequestError):
        return code, str(exc)
    if code == ErrorCode.ENGINE_OVERLOADED:
        log.warning("request %s: the upstream is rate-limiting: %s", request_id, exc)
        return ErrorCode.ENGINE_OVERLOADED, f"the upstream server is rate-limiting requests; retry later (request {request_id})"
    if isinstance(exc, ParleyError):
        log.error("request %s: %s failed: %s", request_id, what, exc)
    else:
        log.error("request %s: %s failed", request_id, what, exc_info=exc)
    return ErrorCode.INTERNAL_ERROR, f"the {what} failed in the worker (request {request_id}; its log has the details)"


_UNREADABLE = "__unreadable__"  # json_body's mark of a body that is no JSON object; `parsed` refuses it


async def json_body(request: Request) -> dict:
    """The body as a dict, read before a streamed response starts; one that is no JSON object is refused by
    `parsed`, inside the response, where the client reads errors."""
    try:
        body = await request.json()
    except ValueError:
        return {_UNREADABLE: "the request body is not JSON"}
    return body if isinstance(body, dict) else {_UNREADABLE: "the request body must be a JSON object"}


def parsed(raw: dict, model: type[T], code: int) -> T:
    """`raw` as `model`; an unreadable body or a value that does not fit is a WorkerError with `code`."""
    if _UNREADABLE in raw:
        raise WorkerError(code, raw[_UNREADABLE])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise WorkerError(code, validation_message(exc)) from None
