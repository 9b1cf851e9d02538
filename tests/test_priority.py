"""Priority from the caller to the device. Over HTTP: the body's `priority` (`/v1/embeddings`, `/encode`) or
the `X-Priority` header (every encode route), refused when unknown or when the two disagree, carried to the
model replica, with a bulk request's own timeout and its share of the ingress's pending requests. In the
model replica: an interactive request goes to the device before the bulk batches that wait, a bulk request
is cut to the bulk batch budget, bulk still progresses under sustained interactive load, and `/info` counts
each lane.

The checks of what is refused need no model (a TestClient app whose model is never called); the rest run on
real Serve and real HTTP, behind `LaneRecorder` (the small checkpoint, recording each request's lane and
deadline as the model replica receives it; a `SlowDevice`, held or slowed so that batches wait by
construction, whose forward passes give the order the device ran them in).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from ray import serve

from serve_app.gateway.access import ApiKeys
from serve_app.gateway.service import EmbeddingService
from serve_app.http.asgi import create_http_app
from serve_app.ingress import Ingress
from serve_app.serving.config import AppArgs, BatchingConfig, RequestLimits
from serve_app.serving.deployments import ingress_deployment_options, model_deployment_options
from serve_app.serving.schemas import EncodeRequest
from tests.support.devices import LaneRecorder
from tests.support.waiting import wait_until_async

LIMITS = RequestLimits(max_pending_requests=4, bulk_pending_share=0.5, request_timeout_s=3, bulk_request_timeout_s=30)
# Each encode route and a body for it; the texts name the route, so the replica's record tells them apart.
ROUTES = {
    "/v1/embeddings": lambda text: {"input": [text]},
    "/encode": lambda text: {"texts": [text]},
    "/score": lambda text: {"query": text, "passages": [text + " passage"]},
    "/embed": lambda text: {"inputs": [text]},
    "/": lambda text: {"inputs": [text]},
    "/embed_sparse": lambda text: {"inputs": [text]},
    "/embed_all": lambda text: {"inputs": [text]},
}
WITH_FIELD = ("/v1/embeddings", "/encode")  # the routes whose body has `priority`


@pytest.fixture(scope="module")
def offline_client():
    service = EmbeddingService(model=object(), args=AppArgs(limits=LIMITS))  # nothing here reaches the model
    with TestClient(create_http_app(service, ApiKeys([]))) as client:
        yield client


def _error(response: httpx.Response, status: int, param: str | None, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    return error["message"]


def test_an_unknown_priority_is_a_422_naming_the_field_or_header_and_both_values(offline_client):
    for route, body in ROUTES.items():
        message = _error(offline_client.post(route, json=body("x"), headers={"X-Priority": "urgent"}), 422,
                         "x-priority", "invalid_priority")
        assert "'interactive'" in message and "'bulk'" in message, message
    for route in WITH_FIELD:
        message = _error(offline_client.post(route, json={**ROUTES[route]("x"), "priority": "urgent"}), 422,
                         "priority", "literal_error")
        assert "'interactive'" in message and "'bulk'" in message, message


def test_body_and_header_that_disagree_are_a_422_and_agreeing_ones_are_not_a_conflict(offline_client):
    """Neither silently wins: a proxy's `X-Priority: bulk` must not be undone by a body's "interactive", nor a
    client's explicit choice be turned around unnoticed."""
    for route in WITH_FIELD:
        conflict = offline_client.post(route, json={**ROUTES[route]("x"), "priority": "interactive"},
                                       headers={"X-Priority": "bulk"})
        assert "'interactive'" in _error(conflict, 422, "priority", "priority_conflict")


def test_openapi_declares_the_field_and_the_header_on_every_encode_route(offline_client):
    schema = offline_client.get("/openapi.json").json()
    for route in ROUTES:
        parameters = schema["paths"][route]["post"].get("parameters", [])
        [header] = [p for p in parameters if p["in"] == "header"]
        assert header["name"] == "X-Priority" and "bulk" in str(header["schema"]), header
    for model in ("OpenAIEmbeddingRequest", "EncodeBody"):
        assert "bulk" in str(schema["components"]["schemas"][model]["properties"]["priority"])


@pytest.fixture(scope="module")
def served(serve_instance, encoder_config):
    """`LaneRecorder` behind the ingress with `LIMITS` (2 bulk requests of 4 pending), at `/`; (url, the
    model's handle)."""
    half = {"ray_actor_options": {"num_cpus": 0.5}}
    # A bulk batch holds at most 64 real tokens (one `_text`): a bulk request of several is several batches.
    user_config = {**BatchingConfig().model_dump(), "bulk_max_queue_tokens": 64, "batch_wait_timeout_s": 0.01,
                   "bulk_quiet_s": 0}  # bulk batches never grow here, but in the test that says so
    model = serve.deployment(LaneRecorder, **{**model_deployment_options(), **half, "user_config": user_config})
    model = model.bind(encoder_config)
    ingress = serve.deployment(serve.ingress()(Ingress), **{**ingress_deployment_options(), **half})
    serve.run(ingress.bind(model, AppArgs(encoder=encoder_config, limits=LIMITS)), name="priority", route_prefix="/")
    return serve_instance, serve.get_deployment_handle("EmbeddingModel", "priority")


def test_every_encode_route_takes_the_priority_to_the_model_replica_with_its_deadline(served):
    url, model = served
    sent: dict[str, str] = {}  # text -> the lane it must reach
    with httpx.Client(base_url=url, timeout=30) as client:
        for route, body in ROUTES.items():
            ways = [("header bulk", {}, {"X-Priority": "bulk"}, "bulk"),
                    ("header interactive", {}, {"X-Priority": "interactive"}, "interactive"),
                    ("nothing said", {}, {}, "interactive")]
            if route in WITH_FIELD:
                ways += [("field bulk", {"priority": "bulk"}, {}, "bulk"),
                         ("both bulk", {"priority": "bulk"}, {"X-Priority": "bulk"}, "bulk")]
            for way, field, headers, lane in ways:
                text = f"{route} by {way}"
                response = client.post(route, json={**body(text), **field}, headers=headers)
                assert response.status_code == 200, (route, way, response.text)
                sent[text] = lane
                if route == "/score":
                    sent[text + " passage"] = lane
    received = {r["inputs"][0]: r for r in model.lanes.remote().result()}
    for text, lane in sent.items():
        assert received[text]["priority"] == lane, text
        timeout = LIMITS.bulk_request_timeout_s if lane == "bulk" else LIMITS.request_timeout_s
        assert timeout - 2 < received[text]["deadline_in_s"] <= timeout, (text, received[text])


def test_bulk_past_its_share_is_refused_at_the_ingress_while_queries_get_in_and_bulk_outlives_their_timeout(served):
    """With the device held, two bulk requests use the bulk share (2 of 4 pending): a third is a 429 with
    Retry-After, by header (before its body is read) and by field, while a query is still admitted and
    reaches the replica; the query is a 504 after `request_timeout_s`, and the bulk ones, with their longer
    timeout, are answered once the device is back."""
    url, model = served

    async def reached(texts: set[str]) -> bool:
        return texts <= {r["inputs"][0] for r in await model.lanes.remote()}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await model.hold.remote()
            try:
                bulk = [asyncio.ensure_future(client.post("/embed", json={"inputs": ["held backfill one"]},
                                                          headers={"X-Priority": "bulk"})),
                        asyncio.ensure_future(client.post("/encode", json={"texts": ["held backfill two"],
                                                                           "priority": "bulk"}))]
                assert await wait_until_async(lambda: reached({"held backfill one", "held backfill two"}), 20)
                for refused in (await client.post("/v1/embeddings", json={"input": "more"},
                                                  headers={"X-Priority": "bulk"}),
                                await client.post("/encode", json={"texts": ["more"], "priority": "bulk"})):
                    assert "bulk_pending_share" in _error(refused, 429, None, "overloaded")
                    assert refused.headers["Retry-After"] == "1"
                query = await client.post("/v1/embeddings", json={"input": "a query behind the backfill"})
                assert await reached({"a query behind the backfill"})  # admitted by the ingress: not a 429
                _error(query, 504, None, "timeout")
                assert not any(task.done() for task in bulk)
            finally:
                await model.release.remote()
            assert [response.status_code for response in await asyncio.gather(*bulk)] == [200, 200]

    asyncio.run(scenario())


# --- the lanes in the model replica ------------------------------------------------------------------

WORDS = ("river", "stone", "cloud", "forest", "lamp", "garden", "window", "mountain", "harbor", "meadow", "candle",
         "bridge", "valley", "island", "desert", "orchard")


def _text(i: int, words: int = 20) -> str:
    """A text of `words` words, distinct from the others by its words (the small tokenizer has no digits)."""
    return " ".join(WORDS[(i + k) % len(WORDS)] + ("s" if k % 3 == i % 3 else "") for k in range(words))


def _encode(handle, texts: list[str], priority: str):
    return handle.encode.remote(EncodeRequest(texts=texts, priority=priority, sparse=False))


def test_an_interactive_request_that_arrives_while_bulk_batches_wait_is_computed_before_them(served, direct):
    """In the model replica (its handle): the device is held with a bulk batch on it; a bulk request of six
    batches, then a query, arrive; on release the query's forward pass comes next, before every bulk batch
    that waited."""
    _, lanes = served
    first, bulk, query = [_text(0)], [_text(i) for i in range(1, 7)], [_text(7, words=5)]
    ids = {tuple(t.ids): text for text, t in zip(first + bulk + query, direct.tokenize(first + bulk + query),
                                                 strict=True)}
    before = len(lanes.state.remote().result()["computed"])

    async def scenario() -> None:
        await lanes.hold.remote()
        on_device = _encode(lanes, first, "bulk")
        assert await wait_until_async(lambda: _in_forward(lanes), deadline_s=30)
        waiting = _encode(lanes, bulk, "bulk")
        await asyncio.sleep(0.5)  # the bulk parts are queued and their batches formed
        late = _encode(lanes, query, "interactive")
        await asyncio.sleep(0.5)
        await lanes.release.remote()
        for response in (on_device, waiting, late):
            await response

    asyncio.run(scenario())
    computed = [ids.get(tuple(row)) for row in lanes.state.remote().result()["computed"][before:]]
    assert computed[:2] == [first[0], query[0]], computed
    assert sorted(computed[2:]) == sorted(bulk)


async def _in_forward(handle) -> bool:
    return (await handle.state.remote())["in_forward"] > 0


def test_info_counts_the_texts_and_tokens_encoded_per_lane(served, direct):
    _, lanes = served
    texts = {"interactive": [_text(20, 6), _text(21, 7)], "bulk": [_text(22, 8), _text(23, 9), _text(24, 10)]}
    before = lanes.info.remote().result()["encoded"]
    for priority, batch in texts.items():
        _encode(lanes, batch, priority).result()
    after = lanes.info.remote().result()["encoded"]
    for priority, batch in texts.items():
        assert after[priority]["texts"] - before[priority]["texts"] == len(batch)
        assert after[priority]["tokens"] - before[priority]["tokens"] == sum(t.n_tokens for t in direct.tokenize(batch))


def test_bulk_progresses_under_sustained_interactive_load(served):
    """Four callers keep queries waiting for a slowed device; a bulk request of eight batches still finishes
    while they run, and queries keep being answered meanwhile."""
    _, lanes = served
    lanes.slow_down.remote(0.0005).result()  # ~30 ms a bulk batch

    async def scenario() -> tuple[float, int, int]:
        stop, answered = time.monotonic() + 60, [0]

        async def caller(k: int) -> None:
            i = 0
            while time.monotonic() < stop:
                await _encode(lanes, [_text(40 + k * 7 + i % 7, words=4)], "interactive")
                answered[0] += 1
                i += 1

        callers = [asyncio.ensure_future(caller(k)) for k in range(4)]
        await asyncio.sleep(1.0)
        started, during = time.monotonic(), answered[0]
        await _encode(lanes, [_text(i, 20) for i in range(60, 68)], "bulk")
        took, during = time.monotonic() - started, answered[0] - during
        stop = 0  # the callers end after their current request
        await asyncio.gather(*callers)
        return took, during, answered[0]

    try:
        took, during, total = asyncio.run(scenario())
    finally:
        lanes.slow_down.remote(0.0).result()
    assert took < 30, took  # finished while the interactive load went on (the callers stop at 60 s)
    assert during > 8  # queries were answered while the backfill ran


def test_bulk_batches_grow_to_the_queue_budget_in_a_quiet_spell_and_shrink_when_queries_come(served):
    """A backfill alone runs in big batches (the forward passes of a small model are mostly overhead); once a
    query comes, a bulk request is cut to bulk_max_queue_tokens again."""
    _, lanes = served
    batching = lanes.info.remote().result()["batching"]
    lanes.reconfigure.remote({**batching, "bulk_quiet_s": 0.3}).result()
    try:
        def batches_for(texts: list[str]) -> int:
            before = lanes.info.remote().result()["counts"].get("batches", 0)
            _encode(lanes, texts, "bulk").result()
            return lanes.info.remote().result()["counts"]["batches"] - before

        time.sleep(0.5)  # quiet: no query for longer than bulk_quiet_s
        assert batches_for([_text(i) for i in range(80, 86)]) == 1
        _encode(lanes, [_text(90, words=4)], "interactive").result()
        assert batches_for([_text(i) for i in range(100, 106)]) == 6  # one 64-token text a batch
    finally:
        lanes.reconfigure.remote(batching).result()
