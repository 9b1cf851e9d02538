"""The FastAPI app of one ingress replica: the routers, error handlers and middleware, around a service.

Middleware runs outermost first: API keys (when configured), then admission and body size
(`guard.RequestGuard`), then the encode routes' hot path (`fast_path`), then the exception handlers of
`errors`, then the routes.
"""

from __future__ import annotations

from fastapi import FastAPI

from .. import __version__
from ..gateway.access import ApiKeys
from ..gateway.service import EmbeddingService
from .errors import install_error_handlers
from .fast_path import EncodeFastPath, encode_paths, hot_routes
from .guard import ApiKeyGuard, RequestGuard
from .routes import native, openai, ops, tei


def create_http_app(service: EmbeddingService, keys: ApiKeys) -> FastAPI:
    """The app serving `service` under its limits; `keys` are the API keys (none: auth off)."""
    app = FastAPI(title="BGE-M3 on Ray", version=__version__,
                  description="Dense, sparse and ColBERT embeddings from BGE-M3, served by Ray Serve.")
    app.state.service = service  # what `routes.common.get_service` hands each handler
    install_error_handlers(app)
    routers = (openai.router, native.router, ops.router, tei.router)
    for router in routers:
        app.include_router(router)
    app.add_middleware(EncodeFastPath, service=service, routes=hot_routes(routers))  # innermost: after the guards
    app.add_middleware(RequestGuard, limits=service.limits, admission=service.admission, bulk=service.bulk,
                       shed=service.shed, encode_paths=encode_paths(routers))
    if keys.enabled:  # added last, so it runs first: no body is read for an unauthenticated caller
        app.add_middleware(ApiKeyGuard, keys=keys)
    return app
