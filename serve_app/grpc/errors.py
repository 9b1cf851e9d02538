"""Every failure mapped to a gRPC status, in one place (as `http/errors.py` does for HTTP).

The kinds of failure are the service's typed errors (`core.errors`, `gateway.errors`); each carries its
`code`, the field at fault (`param`) and, where a retry may help, `retry_after_s`. The status details are
the same message HTTP sends (naming the field and the limit, never a user's text); the trailing metadata
carries `error-code`, `error-param` and, for RESOURCE_EXHAUSTED and UNAVAILABLE, `retry-after` (seconds),
for a unary call (Serve's proxy keeps only the code and details of a failed stream, so a stream's details
say the retry delay too). Bad input is never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from pydantic import ValidationError
from ray.serve.grpc_util import RayServegRPCContext

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

logger = logging.getLogger("serve_app.grpc")


class UnimplementedError(BgeM3Error):
    """A method of a served API this server has no model head for (TEI's `Predict`, `Rerank`)."""

    code = "unimplemented"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# Each kind of failure and its status (a subclass takes its base's unless listed).
STATUS: dict[type[BgeM3Error], grpc.StatusCode] = {
    MissingApiKeyError: grpc.StatusCode.UNAUTHENTICATED,
    InvalidApiKeyError: grpc.StatusCode.PERMISSION_DENIED,
    InputTooLongError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,  # too many texts, too many tokens
    BodyTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,
    DeadlineTooShortError: grpc.StatusCode.INVALID_ARGUMENT,  # too large for its time budget: retrying will not help
    InvalidTextError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidTokenIdError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    WouldMissDeadlineError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestCancelledError: grpc.StatusCode.CANCELLED,
    ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
    EncoderOutOfMemoryError: grpc.StatusCode.UNAVAILABLE,
    UnhealthyError: grpc.StatusCode.UNAVAILABLE,
    RequestTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True)
class Status:
    """What a failed call answers: the status code, its details, and the trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str], ...] = ()


def status_of(exc: BaseException) -> Status:
    """The answer for any exception: a typed failure by `STATUS`, an invalid value INVALID_ARGUMENT naming
    the field, anything else INTERNAL (logged)."""
    if isinstance(exc, BgeM3Error) and (code := mapped(exc, STATUS)) is not None:
        trailers = [("error-code", exc.code)] + ([("error-param", exc.param)] if exc.param else [])
        if exc.retry_after_s:
            trailers.append(("retry-after", str(math.ceil(exc.retry_after_s))))
        return Status(code, str(exc), tuple(trailers))
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = field_path(tuple(first["loc"]), whole="request")
        return Status(grpc.StatusCode.INVALID_ARGUMENT, f"{param}: {first['msg']}",
                      (("error-code", "invalid_value"), ("error-param", param)))
    logger.error("internal error", exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, "internal error", (("error-code", "internal_error"),))


def set_status(context: RayServegRPCContext, exc: BaseException, *, where: str = "") -> Status:
    """Put `exc`'s status on `context` (Serve's proxy sends it with the answer); `where` prefixes the details
    (a stream's failed message: `message 3: ...`)."""
    status = status_of(exc)
    details = f"{where}{status.details}"
    retry = dict(status.trailers).get("retry-after")
    if where and retry:
        details += f" (retry after {retry} s)"
    context.set_code(status.code)
    context.set_details(details)
    context.set_trailing_metadata(list(status.trailers))
    return status
