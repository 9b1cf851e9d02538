"""What every router shares: the service dependency, the JSON answer, and the declared error answers.

Handlers get the `EmbeddingService` from `request.app.state` (set by `http.asgi.create_http_app`)
through `ServiceDep`, so routers hold no state and one app holds one service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import Response

from ...gateway.access import choose_priority
from ...gateway.service import EmbeddingService
from ...serving.schemas import EncodeResult, Priority
from .. import serialization
from ..protocol import PRIORITY_HEADER, PRIORITY_HELP, ErrorBody


async def get_service(request: Request) -> EmbeddingService:
    """The app's service. `async` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
    a thread hop on every request."""
    return request.app.state.service


ServiceDep = Annotated[EmbeddingService, Depends(get_service)]
# Declared on each encode route for the OpenAPI schema; checked once, before the body is read, by the guard.
PriorityHeader = Annotated[Priority | None, Header(alias=PRIORITY_HEADER, description=PRIORITY_HELP.split(";")[0])]


def priority_of(field: Priority | None, header: Priority | None) -> Priority:
    """The request's priority from its body's `priority` (None on routes without one) and `X-Priority`."""
    return choose_priority(field, header, PRIORITY_HEADER)


def json_response(payload: Any, result: EncodeResult | None = None) -> Response:
    """`payload` as JSON; with an encode `result`, TEI-style timing headers too."""
    return Response(serialization.dumps(payload), media_type="application/json",
                    headers=serialization.timing_headers(result) if result is not None else None)


_WHEN = {
    400: "the body is not valid JSON",
    401: "no API key (only when the service has API keys)",
    403: "a wrong API key (only when the service has API keys)",
    413: "the body is over `max_body_bytes`, or too many texts, or a text over `max_length` is not to be cut, or "
         "the request alone would take far longer than its deadline (`exceeds_deadline`)",
    422: "a field or the `X-Priority` header is invalid or not supported, or `priority` and `X-Priority` disagree",
    429: "overloaded: the ingress holds `max_pending_requests` requests (a bulk one: its share of them), or the "
         "model's queue is full (`Retry-After`)",
    503: "the model is unavailable, e.g. loading or its replica died (`Retry-After`)",
    504: "the request did not finish within `request_timeout_s` (bulk: `bulk_request_timeout_s`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the `ErrorBody` every error answer has."""
    return {status: {"model": ErrorBody, "description": _WHEN[status]} for status in statuses}


AUTH = (401, 403)  # every route but /health, when keys are configured (`auth.ApiKeyGuard`)
BODY = (400, 413, 422)  # any JSON body: not JSON, over the size limit, an invalid field
MODEL = (503, 504)  # any call to the model deployment
# A route that encodes texts: every failure above, and 429 from the ingress or the model's queue.
ENCODE_ERRORS = error_responses(*BODY, 429, *MODEL, *AUTH)
