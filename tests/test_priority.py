"""Two lanes in a real model replica (Serve, the small checkpoint): an interactive request goes to the device
before the bulk batches that wait, a bulk request is cut to the bulk batch budget, bulk still progresses
under sustained interactive load, and `/info` counts each lane. The device is `SlowDevice`, held or slowed
so that batches wait by construction; the order is the order of its forward passes."""

from __future__ import annotations

import asyncio
import time

import pytest
from ray import serve

from serve_app.serving.config import BatchingConfig
from serve_app.serving.deployments import model_deployment_options
from serve_app.serving.schemas import EncodeRequest
from tests.support.devices import SlowDevice
from tests.support.waiting import wait_until_async

APP = "lanes"
WORDS = ("river", "stone", "cloud", "forest", "lamp", "garden", "window", "mountain", "harbor", "meadow", "candle",
         "bridge", "valley", "island", "desert", "orchard")


def _text(i: int, words: int = 20) -> str:
    """A text of `words` words, distinct from the others by its words (the small tokenizer has no digits)."""
    return " ".join(WORDS[(i + k) % len(WORDS)] + ("s" if k % 3 == i % 3 else "") for k in range(words))


@pytest.fixture(scope="module")
def lanes(serve_instance, encoder_config):
    """The slow device as app `lanes`; a bulk batch holds at most 64 real tokens (one of these texts)."""
    user_config = {**BatchingConfig().model_dump(), "bulk_max_queue_tokens": 64, "batch_wait_timeout_s": 0.01}
    model = serve.deployment(SlowDevice, **{**model_deployment_options(), "user_config": user_config})
    handle = serve.run(model.bind(encoder_config), name=APP, route_prefix=None)
    yield handle
    serve.delete(APP)


def _encode(handle, texts: list[str], priority: str):
    return handle.encode.remote(EncodeRequest(texts=texts, priority=priority, sparse=False))


def test_an_interactive_request_that_arrives_while_bulk_batches_wait_is_computed_before_them(lanes, direct):
    """The device is held with a bulk batch on it; a bulk request of six batches, then a query, arrive; on
    release the query's forward pass comes next, before every bulk batch that waited."""
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


def test_info_counts_the_texts_and_tokens_encoded_per_lane(lanes, direct):
    texts = {"interactive": [_text(20, 6), _text(21, 7)], "bulk": [_text(22, 8), _text(23, 9), _text(24, 10)]}
    before = lanes.info.remote().result()["encoded"]
    for priority, batch in texts.items():
        _encode(lanes, batch, priority).result()
    after = lanes.info.remote().result()["encoded"]
    for priority, batch in texts.items():
        assert after[priority]["texts"] - before[priority]["texts"] == len(batch)
        assert after[priority]["tokens"] - before[priority]["tokens"] == sum(t.n_tokens for t in direct.tokenize(batch))


def test_bulk_progresses_under_sustained_interactive_load(lanes):
    """Four callers keep queries waiting for a slowed device; a bulk request of eight batches still finishes
    while they run, and queries keep being answered meanwhile."""
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
