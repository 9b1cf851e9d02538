"""Error mapping in one place: each failure kind gets its status, code and headers."""

import json

from ray.serve.exceptions import BackPressureError

from serve_app.core.errors import (
    EncoderOutOfMemoryError,
    InputTooLongError,
    ModelUnavailableError,
    RequestCancelledError,
    RequestTooLargeError,
)
from serve_app.http.errors import error_response, to_api_error


def test_overload_is_429_with_retry_after():
    error = to_api_error(BackPressureError(num_queued_requests=10, max_queued_requests=10))
    assert error.status == 429 and error.headers["Retry-After"] == "1" and error.code == "overloaded"


def test_each_kind_maps_to_its_status():
    assert to_api_error(InputTooLongError(3, 9000, 8192), texts_param="input").param == "input[3]"
    assert to_api_error(RequestTooLargeError("texts", 20000, 16384, "tokens")).status == 413
    assert to_api_error(TimeoutError()).status == 504
    assert to_api_error(ModelUnavailableError("loading")).status == 503
    assert to_api_error(EncoderOutOfMemoryError("too big")).status == 503
    bug = to_api_error(KeyError("secret user text"))
    assert bug.status == 500 and "secret" not in bug.message


def test_a_request_cancelled_by_its_caller_is_499_cancelled():
    """nginx's "client closed request": what a cancelled request is logged as (its client is gone), in the
    JSON error shape, with no Retry-After (nobody is there to retry)."""
    error = to_api_error(RequestCancelledError())
    assert (error.status, error.code, error.type) == (499, "cancelled", "cancelled_error")
    assert error.message == str(RequestCancelledError()) and "Retry-After" not in error.headers
    response = error_response(error)
    assert response.status_code == 499 and response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"error": {"message": error.message, "type": "cancelled_error",
                                                   "param": None, "code": "cancelled"}}
