"""The gateway's own kinds of failure, beside the core's (`core.errors`), and what a model call's Ray errors
mean to a caller (`from_model_call`). Each transport maps all of them in one place (`http/errors.py`,
`grpc/errors.py`), with the two rules they share: a failure's entry in a transport's table (`mapped`) and
an invalid value's field name (`field_path`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from ..core.errors import (
    RETRY_AFTER_S,
    BgeM3Error,
    DeadlineTooShortError,
    ModelUnavailableError,
    RequestTooLargeError,
    TextError,
)

T = TypeVar("T")


def mapped(exc: BaseException, table: Mapping[type[BgeM3Error], T]) -> T | None:
    """`exc`'s entry in a transport's `table` of failures: its own class's, else its nearest base's."""
    return next((table[kind] for kind in type(exc).__mro__ if kind in table), None)


def field_path(loc: tuple, whole: str = "body") -> str:
    """A pydantic error location as a request names its fields: `("input", 3)` -> `input[3]`; union branch
    names (`list[str]`) are dropped; empty: `whole`, the transport's name for the whole request."""
    parts = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float"}))]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or whole


class InvalidRequestError(BgeM3Error):
    """A field's value the service cannot take (empty input, an unsupported option); the message names it."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(param, message, code)
        self.param, self.message, self.code = param, message, code

    def __str__(self) -> str:
        return self.message


class OverloadedError(BgeM3Error):
    """Shed at once, before any work: the ingress holds all it admits, or the model's queue is full."""

    code = "overloaded"
    retry_after_s = RETRY_AFTER_S

    def __init__(self, message: str = "the service is overloaded; retry later"):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnhealthyError(BgeM3Error):
    """The model deployment does not answer its health question; the message says why."""

    code = "unhealthy"
    retry_after_s = RETRY_AFTER_S

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class MissingApiKeyError(BgeM3Error):
    """The service has API keys and the request carries none."""

    code, param = "missing_api_key", "authorization"

    def __str__(self) -> str:
        return "missing API key: send 'Authorization: Bearer <key>'"


class InvalidApiKeyError(BgeM3Error):
    """The request's API key is not one of the service's."""

    code, param = "invalid_api_key", "authorization"

    def __str__(self) -> str:
        return "invalid API key"


class BodyTooLargeError(BgeM3Error):
    """A request body over `limits.max_body_bytes`; `size` is None when the body was cut off while read
    (no length declared)."""

    code, param = "body_too_large", "body"

    def __init__(self, size: int | None, limit: int):
        super().__init__(size, limit)
        self.value, self.limit = size, limit

    def __str__(self) -> str:
        if self.value is None:
            return f"request body is over the limit of {self.limit} bytes"
        return f"request body has {self.value} bytes, more than the limit of {self.limit}"


def from_model_call(exc: BaseException) -> BaseException:
    """What a failed model call means to its caller: the replica's own error (unwrapped from Ray's), or the
    kind a Ray failure stands for (back-pressure: overloaded; a dead or missing replica: unavailable)."""
    while isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, BackPressureError):
        return OverloadedError()
    if isinstance(exc, (RayActorError, DeploymentUnavailableError)):  # a replica died or none is running
        return ModelUnavailableError(f"model replica unavailable ({type(exc).__name__}); retry")
    return exc


def named(exc: BaseException, field: str) -> BaseException:
    """`exc` naming the request field that holds the inputs (`field`, e.g. `input`) where it names one."""
    if isinstance(exc, (TextError, RequestTooLargeError, DeadlineTooShortError)):
        return exc.in_field(field)
    return exc
