"""Every failure mapped to an HTTP status and an OpenAI-style JSON error, in one place.

Body: `{"error": {"message", "type", "param", "code"}}`, declared as `protocol.ErrorBody` in the OpenAPI
schema. The kinds of failure are typed (`core.errors`, `gateway.errors`): each carries its `code`, the
field at fault (`param`) and, where a retry may help, `retry_after_s` (sent as `Retry-After`); this module
adds only the status and the error type. Messages name the field and the limit and never echo a user's text.
"""

from __future__ import annotations

import logging
import math
from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import HTTPExceptionHandler

from ..core.errors import (
    BgeM3Error,
    DeadlineTooShortError,
    EncoderOutOfMemoryError,
    InputTooLongError,
    InvalidTextError,
    InvalidTokenIdError,
    ModelUnavailableError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLargeError,
    WouldMissDeadlineError,
)
from ..gateway.errors import (
    BodyTooLargeError,
    InvalidApiKeyError,
    InvalidRequestError,
    MissingApiKeyError,
    OverloadedError,
    UnhealthyError,
    field_path,
    mapped,
)
from .serialization import dumps

logger = logging.getLogger("serve_app.http")

# Each kind of failure: its HTTP status and OpenAI error type (a subclass takes its base's unless listed).
STATUS: dict[type[BgeM3Error], tuple[int, str]] = {
    MissingApiKeyError: (401, "authentication_error"),
    InvalidApiKeyError: (403, "authentication_error"),
    InputTooLongError: (413, "invalid_request_error"),
    RequestTooLargeError: (413, "invalid_request_error"),  # too many texts, too many tokens
    BodyTooLargeError: (413, "invalid_request_error"),
    DeadlineTooShortError: (413, "invalid_request_error"),  # too large for its time budget: retrying will not help
    InvalidTextError: (422, "invalid_request_error"),
    InvalidTokenIdError: (422, "invalid_request_error"),
    InvalidRequestError: (422, "invalid_request_error"),
    WouldMissDeadlineError: (429, "overloaded_error"),
    OverloadedError: (429, "overloaded_error"),
    RequestCancelledError: (499, "cancelled_error"),  # nginx's "client closed request": logged, never received
    ModelUnavailableError: (503, "service_unavailable_error"),
    EncoderOutOfMemoryError: (503, "service_unavailable_error"),
    UnhealthyError: (503, "service_unavailable_error"),
    RequestTimeoutError: (504, "timeout_error"),
}


class ApiError(Exception):
    """An error answer: status, message, the offending field, code, type and headers."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type_, headers or {}


def error_response(error: ApiError) -> Response:
    """Serialize an `ApiError`."""
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return Response(dumps(body), status_code=error.status, media_type="application/json", headers=error.headers)


def to_api_error(exc: BaseException) -> ApiError:
    """The error the client sees for any exception: a typed failure by `STATUS`, an invalid body 422, anything
    else 500 (logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BgeM3Error) and (known := mapped(exc, STATUS)) is not None:
        status, type_ = known
        headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if exc.retry_after_s else {}
        if isinstance(exc, MissingApiKeyError):
            headers["WWW-Authenticate"] = "Bearer"
        return ApiError(status, str(exc), param=exc.param, code=exc.code, type_=type_, headers=headers)
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = field_path(tuple(first["loc"]))
        return ApiError(422, f"{param}: {first['msg']}", param=param, code="invalid_value")
    logger.exception("internal error", exc_info=exc)
    return ApiError(500, "internal error", code="internal_error", type_="server_error")


async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    # For a union field (`input: str | list[str]`) the deepest error names the offending item.
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        return error_response(ApiError(400, "request body is not valid JSON", param="body", code="invalid_json"))
    param = field_path(tuple(first["loc"])[1:])  # after "body"
    message = f"{param}: {first['msg']}" if first["type"] != "missing" else f"{param}: field required"
    return error_response(ApiError(422, message, param=param, code=first["type"]))


async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=code,
                                   headers=dict(exc.headers or {})))


async def _on_any_error(request: Request, exc: Exception) -> Response:
    return error_response(to_api_error(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error path of `app` through this module."""
    # Starlette types every handler as taking `Exception`; each of these only ever gets its own class.
    app.add_exception_handler(RequestValidationError, cast(HTTPExceptionHandler, _on_validation_error))
    app.add_exception_handler(StarletteHTTPException, cast(HTTPExceptionHandler, _on_http_exception))
    # The typed failures by their own classes: a handler of `Exception` alone runs in Starlette's server-error
    # middleware, which answers and then raises the error again.
    for kind in (BgeM3Error, ValidationError, Exception):
        app.add_exception_handler(kind, _on_any_error)
