"""Overload and timeouts on the real service: bounded queues answer 429/413/504 at once, every 200 is
correct and in order, expired work is dropped, and the service answers normally afterwards.

The long version (`-m load`, BGE_M3_LOAD_SECONDS) is what docs/reliability.md records.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from ray import serve

from serve_app.app import MODEL_DEPLOYMENT, build_app, ingress_deployment_options, model_deployment_options
from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.core.errors import RequestTimeoutError, WouldMissDeadlineError
from serve_app.ingress import Ingress
from serve_app.serving.config import AppArgs, RequestLimits
from serve_app.serving.schemas import EncodeRequest
from tests.support.devices import SlowDevice
from tests.support.faults import model_replicas
from tests.support.load import Checker, closed_loop, make_requests, open_loop, text_pool
from tests.support.waiting import wait_until

MAX_TEXTS = 8
LIMITS = {"max_texts_per_request": MAX_TEXTS, "max_pending_requests": 16, "request_timeout_s": 5}
NO_CACHE = {"backend": "off"}


@pytest.fixture(scope="module")
def config_128(encoder_config) -> EncoderConfig:
    """The shared settings with 128 tokens a text, the size this module's load and timeouts were set for."""
    return encoder_config.model_copy(update={"max_length": 128})


STRICT = {"name": "Strict", "user_config": {"max_queue_tokens": 10**7, "max_concurrent_batches": 1}}
HTTP_TIMEOUT_S = 1.0  # "strict-http"'s request timeout


@pytest.fixture(scope="module")
def url(serve_instance, config_128) -> str:
    """The module's three apps, deployed together (their replicas start side by side); each test uses its
    own: "bge-m3" at / (the overload test), "strict" (a model deployment alone, one batch at a time) and
    "strict-http" at /strict (HTTP_TIMEOUT_S as the request timeout). The last two compute on a
    `SlowDevice`, whose device a test holds busy as long as it needs, whatever the machine's speed."""
    # The cache is off (SlowDevice has none): repeated texts must exercise the model path, not cache hits.
    # "strict": one batch at a time, so the next batch waits in the queue (with 2 it would start at once
    # and wait for the device, out of the queue); a budget no request can exceed.
    ingress = serve.deployment(serve.ingress()(Ingress), **ingress_deployment_options())
    held_http = ingress.bind(serve.deployment(SlowDevice, **model_deployment_options()).bind(config_128),
                             AppArgs(encoder=config_128, limits=RequestLimits(request_timeout_s=HTTP_TIMEOUT_S)))
    serve.run_many([
        serve.RunTarget(build_app({"encoder": config_128.model_dump(), "limits": LIMITS, "cache": NO_CACHE}),
                        name="bge-m3", route_prefix="/"),
        serve.RunTarget(serve.deployment(SlowDevice, **{**model_deployment_options(), **STRICT}).bind(config_128),
                        name="strict", route_prefix=None),
        serve.RunTarget(held_http, name="strict-http", route_prefix="/strict")])
    return serve_instance


@pytest.fixture(scope="module")
def pool() -> list[str]:
    return text_pool(400)


@pytest.fixture(scope="module")
def checker(config_128, pool) -> Checker:
    return Checker(Encoder(config_128), pool)


def _answered(statuses: dict[str, int]):
    """A load condition: at least this many answers of each status."""
    return lambda report: all(report.statuses[s] >= n for s, n in statuses.items())


def _overload(url, pool, checker, seconds: float, multiple: float, until=None) -> tuple:
    """Capacity from 40 answered requests, then an open-loop flood at `multiple` x capacity, for `seconds`
    or, with `until`, until the flood's answers satisfy it (`seconds` then being the deadline)."""
    requests = make_requests(pool, 3000, MAX_TEXTS, oversize_every=25)
    capacity = asyncio.run(closed_loop(url, requests, checker, concurrency=8, seconds=60,
                                       until=_answered({"200": 40})))
    assert capacity.lost == 0 and capacity.statuses["200"] >= 40, capacity.summary()
    before = model_replicas()
    flood = asyncio.run(open_loop(url, requests, checker, rate=capacity.ok_per_s * multiple, seconds=seconds,
                                  timeout=LIMITS["request_timeout_s"] + 30, until=until))
    return capacity, flood, before


def _assert_held(url: str, flood, before: list[str]) -> None:
    summary = flood.summary()
    assert flood.lost == 0, summary  # no wrong vectors, no hang, no reset, no stray status
    assert set(flood.statuses) <= {"200", "413", "429", "504"}, summary
    assert flood.statuses["429"] > 0 and flood.statuses["413"] > 0 and flood.statuses["200"] > 0, summary
    # Load is shed, not queued into timeouts: refusals come back faster than answers, side by side in one
    # run (an absolute bound would fail on a busy machine, where both slow down together).
    assert summary["latency"]["429"]["p50_ms"] < summary["latency"]["200"]["p50_ms"], summary
    # Afterwards: healthy, correct, same replica (no restart).
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
    assert model_replicas() == before


def test_overload_gets_clear_answers_and_correct_vectors(url, pool, checker):
    # The flood lasts until it has drawn every kind of answer it must (60 s at most).
    capacity, flood, before = _overload(url, pool, checker, seconds=60, multiple=4,
                                        until=_answered({"200": 20, "413": 2, "429": 20}))
    _assert_held(url, flood, before)
    after = asyncio.run(closed_loop(url, make_requests(pool, 50, MAX_TEXTS, seed=1), checker, 2, seconds=60,
                                    until=lambda report: report.sent >= 20))
    assert after.lost == 0 and set(after.statuses) == {"200"} and after.sent >= 20, after.summary()


@pytest.mark.load
def test_long_overload(url, pool, checker):
    """Run outside CI: `BGE_M3_LOAD_SECONDS=120 .venv/bin/python -m pytest -m load -s`."""
    seconds = float(os.environ.get("BGE_M3_LOAD_SECONDS", "60"))
    capacity, flood, before = _overload(url, pool, checker, seconds=seconds, multiple=5)
    print({"capacity": capacity.summary(), "overload": flood.summary()})
    _assert_held(url, flood, before)


def test_requests_that_cannot_make_their_deadline_are_never_computed(url, pool):
    """Requests behind a long batch with a deadline shorter than it: each is refused on arrival
    (`WouldMissDeadlineError`, admission by cost: the replica has measured its speed) or, if admitted, times
    out in the queue (`RequestTimeoutError`); none of their texts reaches the model, and the long batch is
    the only one computed. The long batch is one held on the device until every such request is answered:
    long, whatever the machine's speed."""
    model = serve.get_app_handle("strict")  # a SlowDevice, one batch at a time (STRICT), no cache
    texts = [f"{i} " + pool[i % len(pool)] * 3 for i in range(200)]  # distinct: none deduplicated
    for _ in range(2):  # the replica measures its speed (the second probe runs warm)
        model.encode.remote(EncodeRequest(texts=texts[:64])).result()
    n = len(texts) - 64
    before = model.info.remote().result()["counts"]
    try:
        model.hold.remote().result()
        blocker = model.encode.remote(EncodeRequest(texts=texts[64:]))  # no deadline; held on the device
        assert wait_until(lambda: model.state.remote().result()["in_forward"] == 1, 60)
        responses = [model.encode.remote(EncodeRequest(texts=[f"expires {i}"], timeout_s=0.3)) for i in range(20)]
        outcomes = []
        for response in responses:  # each is answered while the device is held
            try:
                outcomes.append(len(response.result(timeout_s=60).embeddings))
            except RequestTimeoutError:
                outcomes.append("timeout")
            except WouldMissDeadlineError:
                outcomes.append("refused")
        held = model.state.remote().result()
        model.release.remote().result()
        assert len(blocker.result(timeout_s=120).embeddings) == n
        after = model.info.remote().result()["counts"]
    finally:
        model.release.remote()
        serve.delete("strict")
    assert set(outcomes) <= {"timeout", "refused"}, outcomes
    assert held["in_forward"] == 1, held  # all answered before the long batch could end
    assert (after.get("timed_out_requests", 0) - before.get("timed_out_requests", 0),
            after.get("refused_by_cost", 0) - before.get("refused_by_cost", 0)) == (
        outcomes.count("timeout"), outcomes.count("refused"))
    # Computed: the blocker's batch and nothing else, not one text of an expired request.
    assert (after["batches"] - before["batches"], after["requests"] - before["requests"],
            after["texts"] - before["texts"]) == (1, 1, n)


def test_http_timeout_is_504_json(url, serve_instance):
    """Requests that wait past the request timeout ("strict-http": HTTP_TIMEOUT_S) behind a device held
    busy are answered 504 with the JSON error, and the service is healthy afterwards."""
    model = serve.get_deployment_handle(MODEL_DEPLOYMENT, "strict-http")
    texts = [f"waits behind the held device {i}" for i in range(8)]

    async def burst():
        async with httpx.AsyncClient(base_url=f"{serve_instance}/strict", timeout=60) as client:
            return await asyncio.gather(*(client.post("/encode", json={"texts": [text]}) for text in texts))

    try:
        model.hold.remote().result()
        blocker = model.encode.remote(EncodeRequest(texts=["holds the device"]))
        assert wait_until(lambda: model.state.remote().result()["in_forward"] == 1, 60)
        responses = asyncio.run(burst())
        model.release.remote().result()
        blocker.result(timeout_s=60)
        health = httpx.get(f"{serve_instance}/strict/health", timeout=30)
    finally:
        model.release.remote()
        serve.delete("strict-http")
    assert [r.status_code for r in responses] == [504] * len(texts), [r.text for r in responses]
    error = responses[0].json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "timeout" and error["type"] == "timeout_error"
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
