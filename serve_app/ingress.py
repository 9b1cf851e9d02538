"""The HTTP ingress deployment: routing, validation, limits and error mapping. It never loads the model.

HTTP -> `Ingress` route -> model handle (`EmbeddingModel.encode`, coalesced by `@serve.batch`)
-> `serialization` -> response with TEI-style timing headers.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Receive, Scope, Send

from . import serialization
from .http_errors import ApiError, error_response, install_error_handlers, to_api_error
from .http_models import EncodeBody, OpenAIEmbeddingRequest, ScoreBody
from .schemas import EncodeRequest, EncodeResult
from .scoring import ScoreWeights, compute_scores
from .serving_config import RequestLimits

VERSION = "0.1.0"


class RequestGuard:
    """Answer 413 before reading more than `max_body_bytes` of a body; read every body as JSON.

    `curl -d` sends form content-type by default; the API only speaks JSON, so it parses any body as JSON
    rather than failing on a header.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(int(declared), limit, scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(413, f"request body is over {limit} bytes", param="body", code="body_too_large")
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _reject(size: int, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(ApiError(413, f"request body has {size} bytes, more than the limit of {limit}",
                                      param="body", code="body_too_large"))(scope, receive, send)


class Ingress:
    """Ray Serve ingress deployment (undecorated: `app.build_app` applies `serve.ingress` and `serve.deployment`).

    Its FastAPI app is built per replica by `__serve_build_asgi_app__`, with this replica's limits.
    """

    def __init__(self, model: DeploymentHandle, served_model_name: str, limits: RequestLimits):
        self._model = model
        self._name = served_model_name
        self._limits = limits
        self._info: dict | None = None
        # Concurrent HTTP requests share one call to the model replica (one RPC instead of one each):
        # no waiting when idle, and while `limits.model_calls_in_flight` calls are out, new requests
        # gather into the next one.
        self._send = serve.batch(max_batch_size=limits.max_requests_per_model_call, batch_wait_timeout_s=0,
                                 max_concurrent_batches=limits.model_calls_in_flight)(self._send_many)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this on the replica, after `__init__`, to get the HTTP app."""
        return create_http_app(self)

    async def _call_model(self, method: str, *args, timeout: float):
        response = getattr(self._model, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise TimeoutError from None

    async def _send_many(self, requests: list[EncodeRequest]) -> list[EncodeResult | Exception]:
        try:
            return await self._model.encode_many.remote(requests)
        except Exception as exc:  # the call itself failed (overload, replica died): every request gets it
            return [exc] * len(requests)

    async def _encode(self, request: EncodeRequest, texts_param: str = "texts") -> EncodeResult:
        try:
            result = await asyncio.wait_for(self._send(request), self._limits.request_timeout_s)
            if isinstance(result, Exception):
                raise result
            return result
        except asyncio.TimeoutError:
            raise to_api_error(TimeoutError(), texts_param=texts_param) from None
        except Exception as exc:
            raise to_api_error(exc, texts_param=texts_param) from None

    async def _model_info(self) -> dict:
        if self._info is None:
            self._info = await self._call_model("info", timeout=self._limits.health_timeout_s)
        return self._info

    def _check_count(self, texts: list[str], param: str) -> None:
        if len(texts) > self._limits.max_texts_per_request:
            raise ApiError(413, f"{param} has {len(texts)} texts, more than the limit of "
                                f"{self._limits.max_texts_per_request}", param=param, code="too_many_texts")

    @staticmethod
    def _respond(payload: dict, result: EncodeResult) -> Response:
        return Response(serialization.dumps(payload), media_type="application/json",
                        headers=serialization.timing_headers(result))

    async def openai_embeddings(self, body: OpenAIEmbeddingRequest) -> Response:
        """OpenAI-compatible dense embeddings."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(422, "input: must not be empty", param="input", code="empty_input")
        self._check_count(texts, "input")
        if body.dimensions is not None:
            dim = (await self._model_info())["dim"]
            if body.dimensions != dim:
                raise ApiError(422, f"dimensions: this model only returns {dim} dimensions", param="dimensions",
                               code="unsupported_dimensions")
        result = await self._encode(EncodeRequest(texts=texts, dense=True), texts_param="input")
        return self._respond(serialization.openai_embeddings(result, self._name, body.encoding_format), result)

    async def encode(self, body: EncodeBody) -> Response:
        """Any mix of dense, sparse (ids or token strings) and ColBERT outputs."""
        self._check_count(body.texts, "texts")
        request = EncodeRequest(**body.model_dump())
        result = await self._encode(request)
        return self._respond(serialization.encode_response(result, self._name), result)

    async def score(self, body: ScoreBody) -> Response:
        """Dense, sparse, ColBERT and hybrid relevance of each passage to the query."""
        self._check_count([body.query, *body.passages], "passages")
        # texts[0] is the query, so an over-long text is named by its place in the request.
        result = await self._encode(EncodeRequest(texts=[body.query, *body.passages], dense=True, sparse=True,
                                                  colbert=True, truncate=body.truncate), texts_param="query+passages")
        weights = ScoreWeights(**body.weights.model_dump())
        query, passages = result.embeddings[0], result.embeddings[1:]
        scores = [compute_scores(query, p, weights) for p in passages]
        return self._respond(serialization.score_response(scores, result, self._name), result)

    async def health(self) -> Response:
        """200 when the model deployment answers; 503 with the reason while loading or broken."""
        try:
            await self._call_model("info", timeout=self._limits.health_timeout_s)
        except Exception as exc:
            reason = "model deployment did not answer in time (loading or overloaded)" if isinstance(
                exc, TimeoutError) else f"model deployment error ({type(exc).__name__}): {to_api_error(exc).message}"
            return error_response(ApiError(503, reason, code="unhealthy", type_="service_unavailable_error",
                                           headers={"Retry-After": "1"}))
        return Response(serialization.dumps({"status": "ok"}), media_type="application/json")

    async def models(self) -> Response:
        """The served model, OpenAI style."""
        return Response(serialization.dumps({"object": "list", "data": [
            {"id": self._name, "object": "model", "created": 0, "owned_by": "bge-m3-ray"}]}),
            media_type="application/json")

    async def info(self) -> Response:
        """Model, dims, max length, device, dtype, batching settings, limits and version."""
        info = await self._model_info()
        return Response(serialization.dumps({**info, "served_model_name": self._name, "version": VERSION,
                                             "limits": self._limits.model_dump()}), media_type="application/json")


def create_http_app(ingress: Ingress) -> FastAPI:
    """The FastAPI app of one ingress replica: routes, body-size limit and error mapping."""
    app = FastAPI(title="BGE-M3 on Ray", version=VERSION,
                  description="Dense, sparse and ColBERT embeddings from BGE-M3, served by Ray Serve.")
    app.add_middleware(RequestGuard, max_body_bytes=ingress._limits.max_body_bytes)
    install_error_handlers(app)
    app.add_api_route("/v1/embeddings", ingress.openai_embeddings, methods=["POST"])
    app.add_api_route("/encode", ingress.encode, methods=["POST"])
    app.add_api_route("/score", ingress.score, methods=["POST"])
    app.add_api_route("/health", ingress.health, methods=["GET"])
    app.add_api_route("/v1/models", ingress.models, methods=["GET"])
    app.add_api_route("/info", ingress.info, methods=["GET"])
    return app


async def _await(response):
    return await response
