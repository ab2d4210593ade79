"""One error type for the OpenAI-compatible API, rendered as OpenAI's error body."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from parley.serving.openai_schemas import UnsupportedField

log = logging.getLogger("parley.api")


class APIError(Exception):
    """An error the client should see: HTTP status plus OpenAI's `{"error": {...}}` fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers  # sent with the error, e.g. a 429's Retry-After

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _document_without_422(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = build()  # FastAPI keeps it in app.openapi_schema
            for path in document.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_field(part) -> bool:
    """Whether a part of a validation error's location is a field or an index (not the name of one of a
    union's forms, such as `list[constrained-str]`)."""
    return isinstance(part, int) or (part.isidentifier() and part not in _TYPE_TAGS)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI renders it; request validation errors are 400s, so the OpenAPI document does
    not list FastAPI's 422 either."""
    _document_without_422(app)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(UnsupportedField)
    async def unsupported_field(request: Request, exc: UnsupportedField) -> JSONResponse:
        return JSONResponse(bad_request(str(exc), exc.field).body(), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # A value that fits none of a field's forms fails each of them; the error worth showing is the one
        # about a bound (too long, too large...), not "should be a string" from a form the client did not mean.
        err = next((e for e in errors if not str(e.get("type", "")).endswith(("_type", "_parsing"))), errors[0])
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and _is_field(x)]
        param = ".".join(loc) or None
        if err.get("type") == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif err.get("type") == "json_invalid":
            message = "The request body is not valid JSON."
        else:
            message = f"Invalid value for {param}: {err.get('msg')}" if param else str(err.get("msg"))
        return JSONResponse(bad_request(message, param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        body = APIError(500, f"internal server error: {type(exc).__name__}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        headers = getattr(exc, "headers", None)  # e.g. a 405's Allow
        if exc.status_code == 405:  # Starlette names the first route of the path only; a path may have several
            headers = dict(headers or {}) | {"Allow": ", ".join(_methods_of(app, request.scope))}
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code,
                            headers=headers)


def _methods_of(app: FastAPI, scope) -> list[str]:
    """Every method the routes of this request's path take."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope | {"method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)
