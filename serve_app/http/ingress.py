"""The HTTP ingress deployment: a Ray Serve replica class that builds the service and its app. It never
loads the model.

HTTP -> `app` (middleware, errors) -> `routes.*` handler -> `service.EmbeddingService` -> model handle
(`dispatch`: requests coalesced into `EmbeddingModel.encode_stream` calls) -> `serialization` -> response.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from ..serving.config import AuthConfig, RequestLimits
from .app import create_http_app
from .auth import load_api_keys
from .service import EmbeddingService


class Ingress:
    """Ray Serve ingress deployment (undecorated: `app.build_app` applies `serve.ingress` and `serve.deployment`).

    Its FastAPI app is built per replica by `__serve_build_asgi_app__`, with this replica's limits.
    """

    def __init__(self, model: DeploymentHandle, served_model_name: str, limits: RequestLimits,
                 auth: AuthConfig | None = None):
        self.service = EmbeddingService(model, served_model_name, limits)
        self._api_keys = load_api_keys(auth or AuthConfig())  # read here, on the replica: never in config

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this on the replica, after `__init__`, to get the HTTP app."""
        return create_http_app(self.service, self.service.limits, self._api_keys)
