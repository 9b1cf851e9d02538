"""Error mapping in one place: each failure kind gets its status, code, field and headers."""

import json

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from serve_app.core.errors import (
    EncoderOutOfMemoryError,
    InputTooLongError,
    InvalidTokenIdError,
    ModelUnavailableError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLargeError,
    TooManyInputsError,
    WouldMissDeadlineError,
)
from serve_app.gateway.errors import MissingApiKeyError, from_model_call, named
from serve_app.http.errors import STATUS, error_response, to_api_error


def test_overload_is_429_with_retry_after():
    error = to_api_error(from_model_call(BackPressureError(num_queued_requests=10, max_queued_requests=10)))
    assert error.status == 429 and error.headers["Retry-After"] == "1" and error.code == "overloaded"
    refused = to_api_error(WouldMissDeadlineError(expected_s=9.0, remaining_s=5.0, retry_after_s=2.2))
    assert refused.status == 429 and refused.headers["Retry-After"] == "3" and refused.code == "would_miss_deadline"


def test_each_kind_maps_to_its_status_and_names_the_field_the_request_used():
    too_long = to_api_error(named(InputTooLongError(3, 9000, 8192), "input"))
    assert (too_long.status, too_long.param, too_long.code) == (413, "input[3]", "input_too_long")
    assert too_long.message.startswith("input[3] has 9000 tokens")
    bad_id = to_api_error(named(InvalidTokenIdError(1, 2, 999, 250), "token_ids"))
    assert (bad_id.status, bad_id.param) == (422, "token_ids[1][2]") and "[0, 250)" in bad_id.message
    tokens = to_api_error(named(RequestTooLargeError("texts", 20000, 16384, "tokens"), "inputs"))
    assert (tokens.status, tokens.param, tokens.code) == (413, "inputs", "request_too_large")
    count = to_api_error(TooManyInputsError("input", 9, 8, "texts"))
    assert (count.status, count.code, count.message) == (413, "too_many_texts", "input has 9 texts, more than the "
                                                                                  "limit of 8")
    assert to_api_error(RequestTimeoutError(60)).status == 504
    assert to_api_error(ModelUnavailableError("loading")).status == 503
    assert to_api_error(from_model_call(RayActorError())).status == 503
    assert to_api_error(EncoderOutOfMemoryError("too big")).headers["Retry-After"] == "1"
    assert to_api_error(MissingApiKeyError()).headers["WWW-Authenticate"] == "Bearer"
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


def test_every_kind_of_failure_the_package_defines_has_a_status():
    """A new kind of failure without a mapping would be a 500: every concrete error class maps."""
    import serve_app.core.errors as core
    import serve_app.gateway.errors as gateway

    kinds = [v for module in (core, gateway) for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, core.BgeM3Error) and v.__module__ == module.__name__]
    startup_only = {core.BgeM3Error, core.ModelLoadError, core.MissingHeadsError, core.AuthConfigError, core.TextError}
    unmapped = [k.__name__ for k in kinds if k not in startup_only and not any(c in STATUS for c in k.__mro__)]
    assert not unmapped
