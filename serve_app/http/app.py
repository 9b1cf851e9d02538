"""The FastAPI app of one ingress replica: middleware, error handlers and the routers, around a service.

Middleware runs outermost first: API keys (when configured), then admission and body size
(`guard.RequestGuard`), then the encode routes' hot path (`fast_path`), then the exception handlers of
`errors`, then the routes.
"""

from __future__ import annotations

from fastapi import FastAPI

from .. import __version__
from ..serving.config import RequestLimits
from .auth import ApiKeyGuard
from .errors import install_error_handlers
from .fast_path import EncodeFastPath
from .guard import RequestGuard
from .routes import native, openai, ops, tei
from .service import EmbeddingService


def create_http_app(service: EmbeddingService, limits: RequestLimits, api_keys: list[bytes]) -> FastAPI:
    """The app serving `service` under `limits`; `api_keys` are key digests (`auth.load_api_keys`), empty
    for no auth."""
    app = FastAPI(title="BGE-M3 on Ray", version=__version__,
                  description="Dense, sparse and ColBERT embeddings from BGE-M3, served by Ray Serve.")
    app.state.service = service  # what `routes.common.get_service` hands each handler
    app.add_middleware(EncodeFastPath, service=service)  # innermost: after the guards below
    app.add_middleware(RequestGuard, limits=limits)
    if api_keys:  # added last, so it runs first: no body is read for an unauthenticated caller
        app.add_middleware(ApiKeyGuard, digests=api_keys)
    install_error_handlers(app)
    for router in (openai.router, native.router, ops.router, tei.router):
        app.include_router(router)
    return app
