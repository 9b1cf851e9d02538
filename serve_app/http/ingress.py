"""The HTTP ingress deployment: routing, validation, limits and error mapping. It never loads the model.

HTTP -> `Ingress` route -> model handle (`EmbeddingModel.encode`, coalesced by `@serve.batch`)
-> `serialization` -> response with TEI-style timing headers.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from fastapi.responses import Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..core.errors import ModelUnavailableError
from ..core.scoring import ScoreWeights, compute_scores
from ..serving.config import AuthConfig, RequestLimits
from ..serving.schemas import EncodeRequest, EncodeResult
from . import serialization
from .auth import ApiKeyGuard, is_public, load_api_keys
from .errors import (
    RETRY_AFTER_S,
    ApiError,
    error_response,
    install_error_handlers,
    to_api_error,
)
from .protocol import EncodeBody, OpenAIEmbeddingRequest, ScoreBody
from .tei import TeiRoutes, tei_info

logger = logging.getLogger("serve_app.http.ingress")


class RequestGuard:
    """Admission and size limits, before any route runs or any body is parsed.

    429 (with Retry-After) once this replica holds `max_pending_requests` requests: cheap and at once,
    so an overloaded service sheds load instead of queueing it into timeouts. 413 before reading more
    than `max_body_bytes` of a body: at once for a larger Content-Length, else (chunked) while reading it
    here, before the route, which then gets the body already read. `/health` is exempt from admission
    so probes see the truth.
    `curl -d` sends form content-type by default; the API only speaks JSON, so every body is parsed as
    JSON rather than failing on a header.
    """

    def __init__(self, app: ASGIApp, limits: RequestLimits):
        self.app = app
        self.limits = limits
        self.pending = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope):
            return await self.app(scope, receive, send)
        if self.pending >= self.limits.max_pending_requests:
            return await error_response(ApiError(
                429, f"the service is overloaded ({self.pending} requests pending, the limit of "
                     "max_pending_requests); retry later", code="overloaded", type_="overloaded_error",
                headers={"Retry-After": RETRY_AFTER_S}))(scope, receive, send)
        limit = self.limits.max_body_bytes
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await error_response(ApiError(413, f"request body has {int(declared)} bytes, more than the limit "
                                                      f"of {limit}", param="body", code="body_too_large"))(
                scope, receive, send)
        self.pending += 1
        try:
            # Read here rather than count inside the route's `receive`: FastAPI turns any error raised
            # while it reads the body into a 400.
            try:
                body = await _read_body(receive, limit)
            except _ClientLeft:
                return  # nobody to answer
            if body is None:
                return await error_response(ApiError(413, f"request body is over the limit of {limit} bytes",
                                                     param="body", code="body_too_large"))(scope, receive, send)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.pending -= 1


class _ClientLeft(Exception):
    """The client disconnected before sending its whole body."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body` as one message, then the client's later messages (disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class Ingress(TeiRoutes):
    """Ray Serve ingress deployment (undecorated: `app.build_app` applies `serve.ingress` and `serve.deployment`).

    Its FastAPI app is built per replica by `__serve_build_asgi_app__`, with this replica's limits.
    """

    def __init__(self, model: DeploymentHandle, served_model_name: str, limits: RequestLimits,
                 auth: AuthConfig | None = None):
        self._model = model
        self._name = served_model_name
        self._limits = limits
        self._api_keys = load_api_keys(auth or AuthConfig())  # read here, on the replica: never in config
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
        """One model call for a group of HTTP requests. A call whose replica died is sent again (encoding
        has no side effects; Serve routes it to a live or replacement replica), up to `model_retries`."""
        for attempt in range(self._limits.model_retries + 1):
            try:
                return await self._model.encode_many.remote(requests)
            except RayActorError as exc:
                logger.warning("model replica lost during a call (%s), attempt %d", type(exc).__name__, attempt + 1)
                failure: Exception = ModelUnavailableError(
                    f"the model replica died while encoding ({type(exc).__name__}); retry")
            except Exception as exc:  # the call itself failed (e.g. overload): every request gets it
                return [exc] * len(requests)
        return [failure] * len(requests)

    async def _encode(self, texts: list[str], texts_param: str = "texts", **outputs) -> EncodeResult:
        """Send with a deadline, and map any failure to the error the client sees."""
        timeout = self._limits.request_timeout_s
        try:
            request = EncodeRequest(texts=texts, timeout_s=timeout, **outputs)
            # Cancelling on timeout drops the request from the ingress queue; the model side drops it too
            # (same timeout) if its batch has not started.
            result = await asyncio.wait_for(self._send(request), timeout)
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

    def _texts(self, value: str | list[str], param: str, *, allow_empty: bool = False) -> list[str]:
        """One text or a list of them, as a list: 422 when empty (unless allowed), 413 past the count limit."""
        texts = [value] if isinstance(value, str) else value
        if not texts and not allow_empty:
            raise ApiError(422, f"{param}: must not be empty", param=param, code="empty_input")
        self._check_count(texts, param)
        return texts

    async def _check_dimensions(self, dimensions: int | None) -> None:
        """`dimensions` may only restate the model's width (BGE-M3 has no Matryoshka truncation)."""
        if dimensions is not None and dimensions != (dim := (await self._model_info())["dim"]):
            raise ApiError(422, f"dimensions: this model only returns {dim} dimensions", param="dimensions",
                           code="unsupported_dimensions")

    def _check_count(self, texts: list[str], param: str) -> None:
        if len(texts) > self._limits.max_texts_per_request:
            raise ApiError(413, f"{param} has {len(texts)} texts, more than the limit of "
                                f"{self._limits.max_texts_per_request}", param=param, code="too_many_texts")

    @staticmethod
    def _respond(payload: dict | list, result: EncodeResult) -> Response:
        return Response(serialization.dumps(payload), media_type="application/json",
                        headers=serialization.timing_headers(result))

    async def openai_embeddings(self, body: OpenAIEmbeddingRequest) -> Response:
        """OpenAI-compatible dense embeddings."""
        texts = self._texts(body.input, "input")
        await self._check_dimensions(body.dimensions)
        result = await self._encode(texts, "input", dense=True, overflow=body.overflow)
        return self._respond(serialization.openai_embeddings(result, self._name, body.encoding_format, body.dtype),
                             result)

    async def encode(self, body: EncodeBody) -> Response:
        """Any mix of dense, sparse (ids or token strings) and ColBERT outputs."""
        self._check_count(body.texts, "texts")
        formats = body.model_dump(include={"encoding_format", "dense_dtype", "colbert_dtype"})
        result = await self._encode(**body.model_dump(exclude=set(formats)))
        return self._respond(serialization.encode_response(result, self._name, **formats), result)

    async def score(self, body: ScoreBody) -> Response:
        """Dense, sparse, ColBERT and hybrid relevance of each passage to the query."""
        self._check_count([body.query, *body.passages], "passages")
        # texts[0] is the query, so an over-long text is named by its place in the request.
        result = await self._encode([body.query, *body.passages], "query+passages", dense=True, sparse=True,
                                    colbert=True, truncate=body.truncate)
        weights = ScoreWeights(**body.weights.model_dump())
        query, passages = result.embeddings[0], result.embeddings[1:]
        scores = [compute_scores(query, p, weights) for p in passages]
        return self._respond(serialization.score_response(scores, result, self._name), result)

    async def health(self) -> Response:
        """200 `ok`, or 200 `degraded` while a model replica is missing or starting; 503 with the reason
        (Serve's own message for a failed model deployment) when the model does not answer."""
        info, status = await asyncio.gather(self._call_model("info", timeout=self._limits.health_timeout_s),
                                            self._model_status(), return_exceptions=True)
        status = None if isinstance(status, BaseException) else status
        if isinstance(info, BaseException):
            reason = "model deployment did not answer in time (loading or overloaded)" if isinstance(
                info, TimeoutError) else f"model deployment error ({type(info).__name__}): {to_api_error(info).message}"
            if status is not None and status["status"] != "HEALTHY":
                reason += f"; deployment {status['status']}: {status['message'] or status['replicas']}"
            return error_response(ApiError(503, reason, code="unhealthy", type_="service_unavailable_error",
                                           headers={"Retry-After": RETRY_AFTER_S}))
        degraded = status is not None and (status["status"] != "HEALTHY" or set(status["replicas"]) != {"RUNNING"})
        return Response(serialization.dumps({"status": "degraded" if degraded else "ok", "model": status}),
                        media_type="application/json")

    async def _model_status(self) -> dict | None:
        """The model deployment as the Serve controller sees it: status, replicas per state, message."""
        loop = asyncio.get_running_loop()
        try:
            overview = await asyncio.wait_for(loop.run_in_executor(None, serve.status), self._limits.health_timeout_s)
            deployment = overview.applications[self._model.app_name].deployments[self._model.deployment_name]
        except Exception:  # the controller is busy or restarting: health falls back to the model's answer
            return None
        return {"status": str(getattr(deployment.status, "value", deployment.status)),
                "message": _last_error_line(deployment.message),
                "replicas": {str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()
                             if n}}

    async def models(self) -> Response:
        """The served model, OpenAI style."""
        return Response(serialization.dumps({"object": "list", "data": [
            {"id": self._name, "object": "model", "created": 0, "owned_by": "bge-m3-ray"}]}),
            media_type="application/json")

    async def info(self) -> Response:
        """Model, dims, max length, device, dtype, batching settings, limits and version."""
        info = self._info = await self._call_model("info", timeout=self._limits.health_timeout_s)  # fresh counts
        return Response(serialization.dumps(info_body(info, self._limits, self._name)), media_type="application/json")


# This server's own `/info` fields, taken by name from the model replica's `info()` (the TEI fields sit
# beside them; nothing is merged blindly, so no field can overwrite another).
MODEL_INFO_FIELDS = ("model", "revision", "dim", "vocab_size", "max_length", "device", "dtype", "max_forward_tokens",
                     "max_batch_size", "min_length_ratio", "torch_threads", "batching", "pid", "counts", "cache")


def info_body(info: dict, limits: RequestLimits, served_model_name: str) -> dict:
    """The `/info` answer: TEI's fields (`max_batch_tokens` is the queue budget, what a request may hold),
    then this server's, each by name."""
    own = {field: info[field] for field in MODEL_INFO_FIELDS}
    return {**tei_info(info, limits), **own, "served_model_name": served_model_name, "version": __version__,
            "limits": limits.model_dump()}


def create_http_app(ingress: Ingress) -> FastAPI:
    """The FastAPI app of one ingress replica: routes, body-size limit and error mapping."""
    app = FastAPI(title="BGE-M3 on Ray", version=__version__,
                  description="Dense, sparse and ColBERT embeddings from BGE-M3, served by Ray Serve.")
    app.add_middleware(RequestGuard, limits=ingress._limits)
    if ingress._api_keys:  # added last, so it runs first: no body is read for an unauthenticated caller
        app.add_middleware(ApiKeyGuard, digests=ingress._api_keys)
    install_error_handlers(app)
    app.add_api_route("/v1/embeddings", ingress.openai_embeddings, methods=["POST"])
    app.add_api_route("/encode", ingress.encode, methods=["POST"])
    app.add_api_route("/score", ingress.score, methods=["POST"])
    app.add_api_route("/health", ingress.health, methods=["GET"])
    app.add_api_route("/v1/models", ingress.models, methods=["GET"])
    app.add_api_route("/info", ingress.info, methods=["GET"])
    tei = [("/embed", ingress.tei_embed), ("/", ingress.tei_embed), ("/embed_sparse", ingress.tei_embed_sparse),
           ("/embed_all", ingress.tei_embed_all), ("/tokenize", ingress.tokenize), ("/decode", ingress.decode)]
    for path, route in tei:
        app.add_api_route(path, route, methods=["POST"])
    return app


def _last_error_line(message: str) -> str:
    """Serve's failure messages end with the replica's traceback; its last line names the error."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
        return f"{lines[0]} {lines[-1]}"
    return " ".join(lines)


async def _await(response):
    return await response
