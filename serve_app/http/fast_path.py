"""The encode routes' hot path, as raw ASGI: the routes marked `@hot` (`POST /v1/embeddings`, `POST /encode`)
without FastAPI's routing, dependency solving and exception middleware.

py-spy on an ingress replica serving one-text requests put a fifth of its samples in that machinery,
around a handler of a few lines (docs/benchmarks.md, "One text per request"). Here a body that
validates (pydantic straight from the JSON bytes) runs the route's own handler; anything else (not JSON,
an invalid field) goes on to the FastAPI app with the body already read, so every error answer and the
OpenAPI schema stay the app's. It runs inside the API-key and admission guards, so both still apply, and
takes the body the admission guard read (`guard.READ_BODY`) rather than reading it again, and the `X-Priority`
header as the guard checked it (`guard.PRIORITY`), handed to the handler as its third argument (FastAPI
hands it the same header, declared on the route). Its table comes
from the app's own routes (`hot_routes`), so a route is declared once, in its router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, get_type_hints

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..gateway.service import EmbeddingService
from ..serving.schemas import Priority
from .errors import error_response, to_api_error
from .guard import PRIORITY, READ_BODY, route_path

Handler = Callable[[Any, EmbeddingService, Priority | None], Awaitable[Response]]
HOT = "bge_m3_hot"  # attribute of a route handler taking the hot path


def hot(handler: Handler) -> Handler:
    """Mark a `POST` route handler `(body, service, priority header)` for the hot path."""
    setattr(handler, HOT, True)
    return handler


def hot_routes(routers: Iterable[APIRouter]) -> dict[str, tuple[type[BaseModel], Handler]]:
    """path -> (request body model, handler) of the routers' `POST` routes marked `@hot`."""
    return {route.path: (get_type_hints(route.endpoint)["body"], route.endpoint)
            for router in routers for route in router.routes
            if isinstance(route, APIRoute) and "POST" in (route.methods or ()) and getattr(route.endpoint, HOT, False)}


def encode_paths(routers: Iterable[APIRouter]) -> frozenset[str]:
    """Paths of the routers' `POST` routes that encode (those taking the `X-Priority` header, `x_priority`):
    where `guard.RequestGuard` sheds what the model replicas already refuse."""
    return frozenset(route.path for router in routers for route in router.routes
                     if isinstance(route, APIRoute) and "POST" in (route.methods or ())
                     and "x_priority" in get_type_hints(route.endpoint, include_extras=True))


class EncodeFastPath:
    """ASGI middleware: the hot routes' valid requests answered here, everything else passed on."""

    def __init__(self, app: ASGIApp, service: EmbeddingService, routes: dict[str, tuple[type[BaseModel], Handler]]):
        self.app = app
        self.service = service
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(route_path(scope)) if scope["type"] == "http" and scope["method"] == "POST" else None
        body = scope.get(READ_BODY)  # read, within the size limit, by `guard.RequestGuard`
        if route is None or body is None:
            return await self.app(scope, receive, send)
        model, handler = route
        try:
            request = model.model_validate_json(body)
        except ValidationError:  # the app names the field, as for any other route; `receive` still has the body
            return await self.app(scope, receive, send)
        try:
            response = await handler(request, self.service, scope.get(PRIORITY))
        except Exception as exc:  # the same mapping as the app's exception handlers
            response = error_response(to_api_error(exc))
        await response(scope, receive, send)


