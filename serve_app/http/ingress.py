"""The HTTP ingress deployment: a Ray Serve replica class that builds the service and its app. It never
loads the model.

HTTP -> `app` (middleware, errors) -> `routes.*` handler -> `service.EmbeddingService` -> model handle
(`dispatch`: requests coalesced into `EmbeddingModel.encode_stream` calls) -> `serialization` -> response.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from ..serving.config import AppArgs
from .app import create_http_app
from .auth import load_api_keys
from .service import EmbeddingService


class Ingress:
    """Ray Serve ingress deployment (undecorated: `app.build_app` applies `serve.ingress` and `serve.deployment`).

    Its FastAPI app is built per replica by `__serve_build_asgi_app__`, with this replica's limits.
    """

    def __init__(self, model: DeploymentHandle, args: AppArgs):
        self.service = EmbeddingService(model, args.served_model_name, args.limits,
                                        openai_token_ids=args.openai_token_ids)
        self._api_keys = load_api_keys(args.auth)  # read here, on the replica: never in config

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this on the replica, after `__init__`, to get the HTTP app."""
        return create_http_app(self.service, self.service.limits, self._api_keys)
