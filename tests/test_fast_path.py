"""`http.fast_path`: what it leaves to the FastAPI app arrives there unchanged, body included.

Valid bodies of the encode routes are answered by their handlers end to end in test_ingress (every
`/v1/embeddings` and `/encode` request there takes the fast path); here, in-process and behind the
admission guard that reads the body for it, the hand-off of everything else, which is what keeps the
app's error answers."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.core.errors import WouldMissDeadlineError
from serve_app.gateway.access import PendingLimit
from serve_app.http.fast_path import EncodeFastPath, encode_paths, hot_routes
from serve_app.http.guard import RequestGuard
from serve_app.http.routes import native, openai, ops, tei
from serve_app.serving.config import RequestLimits

ROUTERS = (openai.router, native.router, ops.router, tei.router)


def _routes():
    """The hot-path table of every router, as `http.asgi` builds it."""
    return hot_routes([openai.router, native.router, ops.router, tei.router])


def test_the_hot_routes_are_the_two_encode_routes_with_their_own_bodies_and_handlers():
    routes = _routes()
    assert {path: (body.__name__, handler.__name__) for path, (body, handler) in routes.items()} == {
        "/v1/embeddings": ("OpenAIEmbeddingRequest", "openai_embeddings"), "/encode": ("EncodeBody", "encode")}


class _Recorder:
    """The downstream ASGI app: records what reached it and answers 299."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _call(downstream, service, method: str, path: str, body: bytes, root_path: str = "", shed=None,
          read: list | None = None) -> int:
    """`method path` with `body` through the admission guard, the fast path, then `downstream`; `shed` is the
    service's early refusal (none by default), `read` collects the body messages the app pulled."""
    limits = RequestLimits()
    app = RequestGuard(EncodeFastPath(downstream, service, _routes()), limits,
                       PendingLimit(limits.max_pending_requests), PendingLimit(limits.max_pending_bulk),
                       shed=shed or (lambda priority: None), encode_paths=encode_paths(ROUTERS))

    async def run() -> int:
        chunks = [body[:3], body[3:]]  # two messages, as a chunked upload arrives

        async def receive():
            if read is not None:
                read.append(len(chunks))
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}
        await app(scope, receive, send)
        return sent[0]["status"]

    return asyncio.run(run())


class _NoService:
    """Stands in for the service: the cases here must never reach a handler."""

    def __getattr__(self, name):
        raise AssertionError(f"the fast path called the service ({name}) for a body it should hand on")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/embeddings", b'{"input": '),                      # not JSON
    ("POST", "/v1/embeddings", b'{"input": 3}'),                    # a field of the wrong type
    ("POST", "/v1/embeddings", b'{"input": "bad \\ud800 text"}'),   # JSON the strict parser refuses
    ("POST", "/encode", b'{"texts": ["a"], "unknown": 1}'),         # a field the route forbids
    ("POST", "/encode", b'{"texts": ["a"], "dense": false, "sparse": false}'),  # no output asked for
    ("POST", "/score", b'{"query": "q", "passages": ["p"]}'),       # another route
    ("GET", "/v1/embeddings", b""),                                 # another method
])
def test_fast_path_hands_every_other_request_to_the_app_with_its_body(method, path, body):
    downstream = _Recorder()
    status = _call(downstream, _NoService(), method, path, body)
    assert status == 299
    assert downstream.calls == [(method, path, body)]


class _Service(_NoService):
    """Records which of its methods a handler asked for, then fails (the fast path answers that 500)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, name):
        self.asked.append(name)
        raise RuntimeError("stand-in service")


@pytest.mark.parametrize(("path", "root_path"), [("/v1/embeddings", ""), ("/bge/v1/embeddings", "/bge")])
def test_fast_path_takes_valid_bodies_of_its_routes_also_under_an_application_prefix(path, root_path):
    downstream, service = _Recorder(), _Service()
    status = _call(downstream, service, "POST", path, b'{"input": "a query"}', root_path)
    assert service.asked == ["inputs"]  # the route's handler ran here (its first call: the inputs)
    assert downstream.calls == []
    assert status == 500  # its failure mapped as the app maps an unexpected error


def test_a_request_the_replicas_already_refuse_is_answered_429_before_its_body_is_read():
    """Under a retry storm a refusal must cost no body read or parse: the guard asks the service first, on
    every encode route (and only there), with the header's priority (interactive without one)."""
    asked: list[str] = []

    def shed(priority):
        asked.append(priority)
        return WouldMissDeadlineError(70.0, 60.0, retry_after_s=20.0)

    for path in sorted(encode_paths(ROUTERS)):
        downstream, read = _Recorder(), []
        assert _call(downstream, None, "POST", path, b'{"input": "x"}', shed=shed, read=read) == 429
        assert not read and not downstream.calls
    assert set(asked) == {"interactive"} and len(asked) == len(encode_paths(ROUTERS)) == 7
    downstream = _Recorder()
    assert _call(downstream, None, "POST", "/tokenize", b'{"inputs": "x"}', shed=shed) == 299  # not an encode route
