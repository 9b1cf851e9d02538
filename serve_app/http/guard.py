"""The access rules (`gateway.access`: API keys, admission, body size) applied to HTTP as ASGI middleware,
before any route runs or any body is parsed.

`ApiKeyGuard`: `Authorization: Bearer <key>` on every route but `/health` (load balancers probe it without
credentials). `RequestGuard`: 429 (with Retry-After) once this replica holds `max_pending_requests`
requests, and 413 before reading more than `max_body_bytes` of a body (at once for a larger Content-Length,
else while reading it here). It reads the `X-Priority` header once: an unknown value is a 422 before the body
is read, a bulk request past its share of the pending requests (`EmbeddingService.bulk`) a 429 just as early,
and the value goes on as `scope[PRIORITY]`, for the routes. It hands the body on to the app, replayed as one
message, and as `scope[READ_BODY]` for the layers inside it (`fast_path`) that need the bytes without reading
them again.
`/health` is exempt from admission so probes see the truth. `curl -d` sends form content-type by default;
the API only speaks JSON, so every body is parsed as JSON rather than failing on a header.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import BgeM3Error
from ..gateway.access import ApiKeys, PendingLimit, check_body_size, parse_priority
from ..gateway.errors import BodyTooLargeError, InvalidRequestError, OverloadedError
from ..serving.config import RequestLimits
from ..serving.schemas import Priority
from .errors import error_response, to_api_error
from .protocol import PRIORITY_HEADER

READ_BODY = "bge_m3.body"  # scope key: the request body, as the guard read it (within `max_body_bytes`)
PRIORITY = "bge_m3.priority"  # scope key: the `X-Priority` header's value, checked; absent when not sent
_PRIORITY_KEY = PRIORITY_HEADER.lower().encode()  # ASGI header names are lower-case bytes
PUBLIC_PATHS = frozenset({"/health"})  # load balancers probe it without credentials


def is_public(scope: Scope) -> bool:
    """Whether the request is for one of `PUBLIC_PATHS`, judged as the router sees it: under a Serve
    `route_prefix`, ASGI's `path` still starts with the prefix, which `root_path` holds."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return path in PUBLIC_PATHS


async def _refuse(exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(to_api_error(exc))(scope, receive, send)


class ApiKeyGuard:
    """ASGI middleware: 401 without a bearer token, 403 with a wrong one, pass-through for `PUBLIC_PATHS`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope):
            try:
                self.keys.check(dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1"))
            except Exception as exc:
                return await _refuse(exc, scope, receive, send)
        await self.app(scope, receive, send)


class RequestGuard:
    """Admission and size limits, before any route runs or any body is parsed."""

    def __init__(self, app: ASGIApp, limits: RequestLimits, admission: PendingLimit, bulk: PendingLimit,
                 shed: Callable[[Priority], BgeM3Error | None], encode_paths: frozenset[str]):
        self.app = app
        self.limits = limits
        self.admission = admission  # the service's: HTTP and gRPC requests count against one limit per replica
        self.bulk = bulk  # the service's bulk allowance: held by the service, checked here before any read
        self.shed, self.encode_paths = shed, encode_paths  # `EmbeddingService.shed`, asked for these routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope):
            return await self.app(scope, receive, send)
        limit = self.limits.max_body_bytes
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        named = dict(headers)
        declared = named.get(b"content-length")
        try:
            if (priority := named.get(_PRIORITY_KEY)) is not None:
                scope[PRIORITY] = parse_priority(priority.decode("latin-1"), PRIORITY_HEADER.lower())
                if scope[PRIORITY] == "bulk":
                    self.bulk.check()  # a flood of bulk requests is refused before any of its bodies is read
            # A request the model replicas have refused the like of, before its body is read (a body saying bulk
            # is judged as interactive here: that refuses less, never more; the replica judges it again).
            if route_path(scope) in self.encode_paths and (shed := self.shed(scope.get(PRIORITY, "interactive"))):
                return await _refuse(shed, scope, receive, send)
            self.admission.admit()
        except (OverloadedError, InvalidRequestError) as exc:
            return await _refuse(exc, scope, receive, send)
        try:
            # Read here rather than count inside the route's `receive`: FastAPI turns any error raised while
            # it reads the body into a 400.
            try:
                check_body_size(int(declared) if declared is not None and declared.isdigit() else None, limit)
                body = await _read_body(receive, limit)
            except BodyTooLargeError as exc:
                return await _refuse(exc, scope, receive, send)
            except _ClientLeft:
                return  # nobody to answer
            scope[READ_BODY] = body  # `scope` is this request's own copy (made for the content type above)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.admission.release()


class _ClientLeft(Exception):
    """The client disconnected before sending its whole body."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; `BodyTooLargeError` as soon as it passes `limit` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(None, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body` as one message, then the client's later messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the `root_path` an application's route prefix adds."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path
