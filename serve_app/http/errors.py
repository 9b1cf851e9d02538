"""Every failure mapped to an HTTP status and an OpenAI-style JSON error, in one place.

Body: `{"error": {"message", "type", "param", "code"}}`, declared as `protocol.ErrorBody` in the
OpenAPI schema. Messages name the field and the limit and never echo a user's text.
"""

from __future__ import annotations

import logging
import math
from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import HTTPExceptionHandler

from ..core.errors import (
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
from .serialization import dumps

logger = logging.getLogger("serve_app.http")
RETRY_AFTER_S = "1"


class ApiError(Exception):
    """An error answer decided in a route: status, message and the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type_, headers or {}


def error_response(error: ApiError) -> Response:
    """Serialize an `ApiError`."""
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return Response(dumps(body), status_code=error.status, media_type="application/json", headers=error.headers)


def _unwrap(exc: BaseException) -> BaseException:
    """The user-level exception inside Ray's task/actor error wrappers."""
    while isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return exc


def _field(loc: tuple) -> str:
    """`("body", "input", 3)` -> `input[3]`; union branch names (`list[str]`) are dropped."""
    parts = [p for p in loc[1:] if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float"}))]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def to_api_error(exc: BaseException, *, texts_param: str = "texts") -> ApiError:
    """Map any exception from validation, the handle or the encoder to the error the client sees."""
    exc = _unwrap(exc)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InputTooLongError):
        return ApiError(413, str(exc).replace("texts[", f"{texts_param}["), param=f"{texts_param}[{exc.index}]",
                        code="input_too_long")
    if isinstance(exc, InvalidTextError):
        return ApiError(422, str(exc).replace("texts[", f"{texts_param}["), param=f"{texts_param}[{exc.index}]",
                        code="invalid_text")
    if isinstance(exc, InvalidTokenIdError):
        return ApiError(422, str(exc).replace("texts[", f"{texts_param}["),
                        param=f"{texts_param}[{exc.index}][{exc.position}]", code="invalid_token_id")
    if isinstance(exc, RequestTooLargeError):
        return ApiError(413, str(exc).replace("texts", texts_param, 1), param=texts_param,
                        code="request_too_large")
    if isinstance(exc, DeadlineTooShortError):  # too large for its time budget: retrying will not help
        return ApiError(413, str(exc), param=texts_param, code="exceeds_deadline")
    if isinstance(exc, WouldMissDeadlineError):
        return ApiError(429, str(exc), code="would_miss_deadline", type_="overloaded_error",
                        headers={"Retry-After": str(math.ceil(exc.retry_after_s or 1))})
    if isinstance(exc, BackPressureError):
        return ApiError(429, "the service is overloaded; retry later", code="overloaded", type_="overloaded_error",
                        headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, ModelUnavailableError):
        return ApiError(503, str(exc), code="model_unavailable", type_="service_unavailable_error",
                        headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, (RayActorError, DeploymentUnavailableError)):  # a replica died or none is running
        return ApiError(503, f"model replica unavailable ({type(exc).__name__}); retry", code="model_unavailable",
                        type_="service_unavailable_error", headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, RequestCancelledError):  # nginx's "client closed request": logged, never received
        return ApiError(499, str(exc), code="cancelled", type_="cancelled_error")
    if isinstance(exc, RequestTimeoutError):
        return ApiError(504, str(exc), code="timeout", type_="timeout_error")
    if isinstance(exc, TimeoutError):
        return ApiError(504, "the request did not finish within the request timeout", code="timeout",
                        type_="timeout_error")
    if isinstance(exc, EncoderOutOfMemoryError):
        return ApiError(503, str(exc), code="out_of_memory", type_="service_unavailable_error",
                        headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = _field(("body", *first["loc"]))
        return ApiError(422, f"{param}: {first['msg']}", param=param, code="invalid_value")
    logger.exception("internal error", exc_info=exc)
    return ApiError(500, "internal error", code="internal_error", type_="server_error")


async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    # For a union field (`input: str | list[str]`) the deepest error names the offending item.
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        return error_response(ApiError(400, "request body is not valid JSON", param="body", code="invalid_json"))
    param = _field(tuple(first["loc"]))
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
    app.add_exception_handler(ApiError, _on_any_error)
    app.add_exception_handler(Exception, _on_any_error)
