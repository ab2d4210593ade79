"""How a worker's failures reach its clients: FastChat's error codes, and messages that say what is wrong with a
request but nothing of the worker's internals."""

from __future__ import annotations

import logging
import uuid

from fastapi import Request
from pydantic import ValidationError

from parley.errors import (
    ContextLengthError,
    InvalidPromptError,
    InvalidRequestError,
    ParleyError,
)
from parley.serving.protocol import ErrorCode

log = logging.getLogger("parley.worker")


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


def failure_for_client(exc: Exception, request_id: str, what: str, log_it: bool = True) -> tuple[int, str]:
    """The error code and message a client sees for a failed request. A fault of the request says what is wrong;
    anything else (an engine bug, CUDA, an upstream's failure) goes to this log in full, under the request id
    the client is told, and the client learns no internals."""
    if isinstance(exc, WorkerError):
        return exc.code, exc.message
    if isinstance(exc, ContextLengthError):
        return ErrorCode.CONTEXT_OVERFLOW, str(exc)
    if isinstance(exc, InvalidPromptError):
        return ErrorCode.VALIDATION_TYPE_ERROR, str(exc)
    if isinstance(exc, InvalidRequestError):
        return ErrorCode.PARAM_OUT_OF_RANGE, str(exc)
    status = getattr(exc, "status", None)  # an upstream's answer
    if not log_it:
        return (ErrorCode.ENGINE_OVERLOADED if status == 429 else ErrorCode.INTERNAL_ERROR), ""
    if status == 429:  # an upstream's 429 stays a 429
        log.warning("request %s: the upstream is rate-limiting: %s", request_id, exc)
        return ErrorCode.ENGINE_OVERLOADED, f"the upstream server is rate-limiting requests; retry later (request {request_id})"
    if isinstance(exc, ParleyError):
        log.error("request %s: %s failed: %s", request_id, what, exc)
    else:
        log.error("request %s: %s failed", request_id, what, exc_info=exc)
    return ErrorCode.INTERNAL_ERROR, f"the {what} failed in the worker (request {request_id}; its log has the details)"


async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {"__invalid__": "the request body is not JSON"}
    return body if isinstance(body, dict) else {"__invalid__": "the request body must be a JSON object"}
