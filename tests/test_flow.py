"""The model replica's request flow (`serving.flow`) without Serve: a call's requests prepared (cache, tokens,
size), admitted by cost and answered (deadline, cancel), with the real encoder and device runner in this
process and the queue reduced to "run this job now"."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serve_app.core.cache import CacheConfig
from serve_app.core.cache.cached_encoder import CachingEncoder
from serve_app.core.encoder import Encoder
from serve_app.core.errors import (
    DeadlineTooShortError,
    InvalidTokenIdError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from serve_app.serving.admission import DeviceLoad
from serve_app.serving.flow import RequestFlow
from serve_app.serving.metrics import ReplicaStats
from serve_app.serving.runner import DeviceRunner
from serve_app.serving.schemas import EncodeRequest


class Replica:
    """The flow wired as `EmbeddingModel` wires it, with a queue that runs each job at once (or waits for
    `gate` first, when set)."""

    def __init__(self, encoder: Encoder, cache: CacheConfig | None = None, max_queue_tokens: int = 4096):
        self.stats, self.load = ReplicaStats(), DeviceLoad()
        self.runner = DeviceRunner(encoder, self.load, self.stats)
        self.gate: asyncio.Event | None = None
        self.at_gate = 0  # jobs waiting at the gate
        self.flow = RequestFlow(encoder, CachingEncoder(encoder, cache), self.submit, self.load, self.stats,
                                lambda: max_queue_tokens)

    def submit(self, job) -> asyncio.Future:
        answered = asyncio.ensure_future(self._run(job))
        self.load.queued(job, answered)
        return answered

    async def _run(self, job):
        if self.gate is not None:
            self.at_gate += 1
            await self.gate.wait()
        [outcome] = await self.runner.run([job])
        return outcome

    def call(self, requests: list[EncodeRequest]) -> list[list[tuple[int, object]]]:
        """Every update of one call's stream."""
        async def run():
            return [update async for update in self.flow.stream(requests)]
        return asyncio.run(run())


@pytest.fixture(scope="module")
def encoder(encoder_config) -> Encoder:
    """An encoder of its own: the runner hooks its layers."""
    return Encoder(encoder_config)


def test_cache_hits_are_answered_in_the_first_update_and_only_misses_are_computed(encoder, direct):
    replica = Replica(encoder, CacheConfig(backend="memory"))
    replica.call([EncodeRequest(texts=["a cached text"])])
    computed_before = replica.stats.counts["texts"]
    [first, computed] = replica.call([EncodeRequest(texts=["a cached text"]),
                                      EncodeRequest(texts=["a cached text", "a new text"])])
    assert [i for i, _ in first] == [0] and [i for i, _ in computed] == [1]
    assert replica.stats.counts["texts"] - computed_before == 1  # only "a new text" reached the device
    hit, mixed = first[0][1], computed[0][1]
    assert hit.batch_requests == 0 and mixed.batch_requests == 1
    expected = direct.encode(["a cached text", "a new text"])
    for got, exp in zip(hit.embeddings + mixed.embeddings, expected[:1] + expected, strict=True):
        np.testing.assert_allclose(got.dense, exp.dense, atol=1e-6)
        np.testing.assert_array_equal(got.sparse_indices, exp.sparse_indices)
    assert mixed.prompt_tokens == sum(e.n_tokens for e in expected)


def test_token_ids_outside_the_vocabulary_are_refused_before_the_cache_naming_the_id(encoder):
    """Ids past 64 bits once made the cache key itself fail (a 500): the ids are checked first."""
    replica = Replica(encoder, CacheConfig(backend="memory"))
    for bad in (2**64, encoder.tokenizer.vocab_size, -1):
        [first] = replica.call([EncodeRequest(token_ids=[[0, 5, 2], [0, bad, 2]])])
        [(index, error)] = first
        assert index == 0 and isinstance(error, InvalidTokenIdError) and error.param == "texts[1][1]", error
    assert replica.stats.counts["texts"] == 0


def test_a_request_past_its_deadline_is_answered_at_once_and_never_computed(encoder):
    replica = Replica(encoder)
    [first] = replica.call([EncodeRequest(texts=["too late"], deadline=time.time() - 1)])
    assert isinstance(first[0][1], RequestTimeoutError) and replica.stats.counts["texts"] == 0
    assert replica.stats.counts["timed_out_requests"] == 1


def test_calls_and_their_requests_are_counted_once_each_refused_ones_included(encoder):
    """`/info`'s `calls` and `requests_received`: requests per call is what the ingress's coalescing achieved."""
    replica = Replica(encoder)
    replica.call([EncodeRequest(texts=["one", "two"]), EncodeRequest(texts=["late"], deadline=time.time() - 1)])
    replica.call([EncodeRequest(texts=["three"])])
    counts = replica.stats.counts
    assert (counts["calls"], counts["requests_received"], counts["requests"]) == (2, 3, 2), counts


def test_a_request_over_the_queue_budget_is_refused_with_its_token_count(encoder):
    replica = Replica(encoder, max_queue_tokens=10)
    first, *_ = replica.call([EncodeRequest(texts=["fits"]), EncodeRequest(texts=["one two three four five six " * 3])])
    answers = dict(first)
    assert list(answers) == [1] and isinstance(answers[1], RequestTooLargeError) and answers[1].limit == 10


def test_a_request_the_device_cannot_finish_by_its_deadline_is_refused_by_cost(encoder):
    replica = Replica(encoder)
    replica.load.speed.record(tokens=10, seconds=10.0)  # a device measured at 1 token/s
    [first] = replica.call([EncodeRequest(texts=["far too many tokens for five seconds " * 4], timeout_s=5)])
    assert isinstance(first[0][1], DeadlineTooShortError) and replica.stats.counts["refused_by_cost"] == 1
    assert replica.stats.counts["texts"] == 0


def _cancel_one_of_two(replica: Replica, started: int) -> tuple[list, list]:
    """Stream two requests, cancel the first once `started` jobs wait at the gate, then open the gate: the
    update holding the cancelled one, and every later update."""
    async def run():
        replica.gate = asyncio.Event()  # the queue holds every job until the gate opens
        stream = replica.flow.stream([EncodeRequest(texts=["left behind"], request_id="r1"),
                                      EncodeRequest(texts=["kept"], request_id="r2")])
        assert await stream.__anext__() == []  # both admitted, none answered yet
        waiting = asyncio.ensure_future(stream.__anext__())
        while replica.at_gate < started or not replica.flow._cancellable:
            await asyncio.sleep(0)
        assert replica.flow.cancel(["r1", "unknown"]) == 1
        cancelled = await waiting
        replica.gate.set()
        return cancelled, [update async for update in stream]

    return asyncio.run(run())


@pytest.mark.parametrize("started", [2, 0], ids=["waiting-for-the-device", "before-its-task-ran"])
def test_cancel_drops_a_request_that_waits_and_answers_it_cancelled(encoder, started):
    replica = Replica(encoder)
    cancelled, rest = _cancel_one_of_two(replica, started)
    assert [(i, type(a)) for i, a in cancelled] == [(0, RequestCancelledError)]
    assert [i for update in rest for i, _ in update] == [1] and replica.stats.counts["texts"] == 1
    assert replica.stats.counts["cancelled_requests"] == 1


@pytest.mark.parametrize("fills", [False, True])
def test_bulk_requests_read_the_memory_cache_but_fill_it_only_when_configured(encoder, fills):
    """A backfill must not evict the queries' hot entries: by default bulk only reads the in-memory LRU."""
    replica = Replica(encoder, CacheConfig(backend="memory", bulk_fills_memory=fills))
    replica.call([EncodeRequest(texts=["a query seen before"])])
    [[(_, hit)]] = replica.call([EncodeRequest(texts=["a query seen before"], priority="bulk")])
    assert hit.batch_requests == 0  # read: answered from the cache, nothing computed
    replica.call([EncodeRequest(texts=["a passage of the backfill"], priority="bulk")])
    [first, *_] = replica.call([EncodeRequest(texts=["a passage of the backfill"])])
    assert bool(first) == fills  # stored by the bulk request only when bulk fills the memory cache


def test_requests_answered_while_the_stream_waits_at_a_yield_are_still_sent(encoder):
    """The stream hands over each update and is suspended until its reader asks for the next: a request answered
    meanwhile, when it was the last one waiting, was once never sent (the call ended without it)."""
    replica = Replica(encoder)
    submitted: list = []
    release = asyncio.Event()
    run_now = replica._run

    async def second_held(job):
        submitted.append(job)
        if len(submitted) == 2:
            await release.wait()
        return await run_now(job)

    replica._run = second_held

    async def run():
        stream = replica.flow.stream([EncodeRequest(texts=["answered first"]), EncodeRequest(texts=["held back"])])
        assert await stream.__anext__() == []  # nothing answered before the queue
        [(index, _)] = await stream.__anext__()
        assert index == 0
        release.set()  # the held request is computed while the stream waits at its yield
        while replica.stats.counts["texts"] < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        return [update async for update in stream]

    rest = asyncio.run(run())
    assert [i for update in rest for i, _ in update] == [1]
