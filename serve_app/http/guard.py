"""Admission and body-size limits for the HTTP app, as ASGI middleware: answered before any route runs.

Owns `RequestGuard` (429 past `max_pending_requests`, 413 past `max_body_bytes`) and the helpers that
read a body up to the limit and hand it on to the app: replayed as one message, and as `scope[READ_BODY]`
for the layers inside it (`fast_path`) that need the bytes without reading them again.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..serving.config import RequestLimits
from .auth import is_public
from .errors import RETRY_AFTER_S, ApiError, error_response

READ_BODY = "bge_m3.body"  # scope key: the request body, as the guard read it (within `max_body_bytes`)


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
            scope[READ_BODY] = body  # `scope` is this request's own copy (made for the content type above)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.pending -= 1


class _ClientLeft(Exception):
    """The client disconnected before sending its whole body."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
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

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
