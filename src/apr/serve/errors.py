"""OpenAI-shaped error replies: `{"error": {"message", "type", "param", "code"}}` for every failure."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

log = logging.getLogger("apr.serve")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
# What FastAPI raises when the body cannot even be decoded (invalid UTF-8 among others).
BODY_PARSE_FAILURE = "There was an error parsing the body"


class ApiError(Exception):
    """A request the server refuses (4xx) or cannot complete (5xx), with the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def describe_validation_errors(errors: list[dict[str, Any]]) -> ApiError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first offending field."""
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "malformed JSON")
        return bad_request(f"The request body is not valid JSON ({reason}).", code="invalid_json")
    if first.get("type") == "invalid_text":  # protocol.INVALID_TEXT: the model validator names the path itself
        path = (first.get("ctx") or {}).get("path") or None
        return bad_request(f"Invalid request: '{path}': {first.get('msg')}.", param=path, code="invalid_text")
    # loc is ("body", field, ...) ; union branches add type names like "str" or "list[int]" that
    # mean nothing to a client, so only field names and list indices are kept.
    location = [part for part in first.get("loc", ()) if part != "body"]
    field_names = [str(part) for part in location if isinstance(part, int) or _is_field_name(part)]
    param = ".".join(field_names) or None
    if not location:
        return bad_request("The request body must be a JSON object (sent as application/json).", code="invalid_body")
    message = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    where = f"'{param}': " if param else ""
    return bad_request(f"Invalid request: {where}{message}{more}.", param=param)


UNION_BRANCH_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_field_name(part: object) -> bool:
    text = str(part)
    return text.isidentifier() and text not in UNION_BRANCH_TAGS


def install_error_handlers(app: FastAPI) -> None:
    """Make every error reply, FastAPI's own included, take the OpenAI shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(describe_validation_errors(list(exc.errors())))

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        if exc.status_code == 400 and detail == BODY_PARSE_FAILURE:
            return _json(bad_request("The request body is not valid UTF-8 JSON.", code="invalid_json"))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
        error = ApiError(exc.status_code, f"{detail} ({request.method} {request.url.path}).", type=kind, code=code)
        return _json(error, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The cause goes to the log only: exception text is internal (paths, code, other requests' data).
        incident = uuid.uuid4().hex[:12]
        log.error(
            "internal error %s on %s %s: %s: %s",
            incident,
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        message = f"Internal server error; the server log has the cause (incident {incident})."
        return _json(ApiError(500, message, type=SERVER_ERROR))

    app.add_exception_handler(ApiError, _narrowed(ApiError, on_api_error, on_unexpected))
    app.add_exception_handler(
        RequestValidationError, _narrowed(RequestValidationError, on_validation_error, on_unexpected)
    )
    app.add_exception_handler(StarletteHTTPException, _narrowed(StarletteHTTPException, on_http_error, on_unexpected))
    app.add_exception_handler(Exception, on_unexpected)


E = TypeVar("E", bound=Exception)
Handler = Callable[["Request", E], Awaitable["JSONResponse"]]


def _narrowed(kind: type[E], handler: Handler[E], fallback: Handler[Exception]) -> Handler[Exception]:
    """`handler` in the shape Starlette registers (any exception); Starlette only hands it `kind`."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, kind):
            return await handler(request, exc)
        return await fallback(request, exc)

    return handle


def _json(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status, headers=headers)
