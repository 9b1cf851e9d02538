"""The ingress deployment: a Ray Serve replica class that builds the gateway service once per replica and
serves it over HTTP (the FastAPI app of `http.asgi`) and gRPC (the methods of `grpc.servicer`, which Serve's
gRPC proxy calls by name). It never loads the model.

HTTP -> `http` (guards, routes, errors) -> `gateway.service.EmbeddingService` -> model handle (`gateway.dispatch`:
requests coalesced into `EmbeddingModel.encode_stream` calls) -> `http.serialization` -> response.
gRPC -> `grpc` (call rules, TEI / native handlers, status codes) -> the same service.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from .gateway.access import ApiKeys, load_api_keys
from .gateway.service import EmbeddingService
from .grpc.calls import CallRules
from .grpc.servicer import GrpcServicer
from .http.asgi import create_http_app
from .serving.config import AppArgs


class Ingress(GrpcServicer):
    """Ray Serve ingress deployment (undecorated: `app.build_service` applies `serve.ingress` and
    `serve.deployment`). Its FastAPI app is built per replica by `__serve_build_asgi_app__`; its gRPC methods
    come from `GrpcServicer`."""

    def __init__(self, model: DeploymentHandle, args: AppArgs):
        self.service = EmbeddingService(model, args)
        self._keys = ApiKeys(load_api_keys(args.auth))  # read here, on the replica: never in config
        self.grpc_rules = CallRules(self.service, self._keys)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this on the replica, after `__init__`, to get the HTTP app."""
        return create_http_app(self.service, self._keys)
