"""What every router shares: the service dependency and the JSON answer.

Handlers get the `EmbeddingService` from `request.app.state` (set by `http.app.create_http_app`)
through `ServiceDep`, so routers hold no state and one app holds one service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from ...serving.schemas import EncodeResult
from .. import serialization
from ..service import EmbeddingService


async def get_service(request: Request) -> EmbeddingService:
    """The app's service. `async` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
    a thread hop on every request."""
    return request.app.state.service


ServiceDep = Annotated[EmbeddingService, Depends(get_service)]


def json_response(payload: Any, result: EncodeResult | None = None) -> Response:
    """`payload` as JSON; with an encode `result`, TEI-style timing headers too."""
    return Response(serialization.dumps(payload), media_type="application/json",
                    headers=serialization.timing_headers(result) if result is not None else None)

