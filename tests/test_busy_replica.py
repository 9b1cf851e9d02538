"""A model replica on a slow device: Serve's health probe does not wait behind its batches (no restart
however long they run), a stalled device is reported unhealthy, and a request past its deadline, refused
by cost or abandoned by its client never reaches the forward pass, whether it came through a Python
handle or over HTTP.

The device is `tests.support.devices.SlowDevice`: the real encoder with its forward pass slowed per padded
token (as a big batch of the full-size model on a CPU is slow), held on demand (a hung device), and
recording the token ids of every text it computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.app import ingress_deployment_options, model_deployment_options
from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.core.errors import DeadlineTooShortError, RequestTimeoutError, WouldMissDeadlineError
from serve_app.http.errors import to_api_error
from serve_app.ingress import Ingress
from serve_app.serving.autoscaling import QUEUED_TOKENS_METRIC
from serve_app.serving.config import AppArgs, BatchingConfig, RequestLimits
from serve_app.serving.schemas import EncodeRequest
from tests.support.devices import SlowDevice
from tests.support.faults import model_replicas
from tests.support.load import text_pool
from tests.support.waiting import wait_until, wait_until_async

# A request of 8 pool texts (~1,000 padded tokens) takes ~3 s on the device: each batch is longer
# than the health timeout set below.
SLOW_S_PER_TOKEN = 0.003


@pytest.fixture(scope="module")
def config_128(encoder_config) -> EncoderConfig:
    """The shared settings with 128 tokens a text: SLOW_S_PER_TOKEN is set for requests of pool texts cut
    there (~1,000 padded tokens for 8)."""
    return encoder_config.model_copy(update={"max_length": 128})


@pytest.fixture(scope="module")
def direct_128(config_128) -> Encoder:
    """What the slow device's texts (pool texts, past the shared 64 tokens) must encode to."""
    return Encoder(config_128)


def _slow_device(app: str, config: EncoderConfig, s_per_token: float = 0.0, **options) -> serve.RunTarget:
    """`SlowDevice` as app `app` (its deployment keeps the model's name, so `model_replicas(app)` lists it)."""
    options = {**model_deployment_options(), **options}
    return serve.RunTarget(serve.deployment(SlowDevice, **options).bind(config, s_per_token), name=app,
                           route_prefix=None)


# Each test below has an app of its own, deployed in two groups (their replicas start side by side; all
# four at once would not fit the suite's Ray, and the stalled replica's replacement needs a slot too).
BUSY_OPTIONS = {"health_check_period_s": 1, "health_check_timeout_s": 2}
STALL_OPTIONS = {"health_check_period_s": 2, "health_check_timeout_s": 5, "graceful_shutdown_timeout_s": 1}


@pytest.fixture(scope="module")
def busy_and_stall(serve_instance, config_128) -> dict:
    handles = serve.run_many([
        _slow_device("busy", config_128, SLOW_S_PER_TOKEN, **BUSY_OPTIONS,
                     user_config=_user_config(stall_timeout_s=120)),
        _slow_device("stall", config_128, **STALL_OPTIONS, user_config=_user_config(stall_timeout_s=2))])
    return dict(zip(["busy", "stall"], handles, strict=True))


@pytest.fixture(scope="module")
def deadline_apps(serve_instance, config_128) -> dict:
    """"deadlines" (SlowDevice alone, a 50 ms batch window) and "http-deadlines" (SlowDevice behind the
    ingress, with a 1 s request timeout, at /deadlines)."""
    model = serve.deployment(SlowDevice, **model_deployment_options()).bind(config_128)
    ingress = serve.deployment(serve.ingress()(Ingress), **ingress_deployment_options())
    handles = serve.run_many([
        _slow_device("deadlines", config_128, user_config=_user_config(batch_wait_timeout_s=0.05)),
        serve.RunTarget(ingress.bind(model, AppArgs(limits=RequestLimits(request_timeout_s=1.0))),
                        name="http-deadlines", route_prefix="/deadlines")])
    return dict(zip(["deadlines", "http-deadlines"], handles, strict=True))


def _slow_service(app: str, config: EncoderConfig, request_timeout_s: float,
                  s_per_token: float = SLOW_S_PER_TOKEN) -> DeploymentHandle:
    """A slow `SlowDevice` behind the ingress, as app `app` at `/<app>` (both replicas on half a CPU, so they fit
    beside the module's other apps); the model's handle."""
    half = {"ray_actor_options": {"num_cpus": 0.5}}
    model = serve.deployment(SlowDevice, **{**model_deployment_options(), **half}).bind(config, s_per_token)
    ingress = serve.deployment(serve.ingress()(Ingress), **{**ingress_deployment_options(), **half})
    serve.run(ingress.bind(model, AppArgs(limits=RequestLimits(request_timeout_s=request_timeout_s))),
              name=app, route_prefix=f"/{app}")
    return serve.get_deployment_handle("EmbeddingModel", app)


def _user_config(**knobs) -> dict:
    return {**BatchingConfig().model_dump(), **knobs}


def test_the_encoder_reports_progress_after_each_transformer_layer(encoder_config):
    """The heartbeat's unit of progress: one call per layer per forward pass, so a stall is told from a
    long batch by the time since the last layer, whatever the batch's length."""
    encoder, calls = Encoder(encoder_config), []  # its own: a callback is registered on it
    encoder.on_layer_done(lambda: calls.append(1))
    encoder.encode(["one forward pass", "of two texts"], dense=True, sparse=False)
    assert len(calls) == encoder.transformer.config.num_hidden_layers


def test_a_busy_replica_passes_health_checks_however_long_its_batches(busy_and_stall):
    """Batches of several seconds under sustained load, Serve probing every second with a 2 s timeout:
    the probes pass while the device works, and the replica is never restarted (same actor, same pid)."""
    options = BUSY_OPTIONS  # and stall_timeout_s=120
    model = busy_and_stall["busy"]
    pool, stop = text_pool(64), threading.Event()
    before, first_pid = model_replicas("busy"), model.state.remote().result()["pid"]

    def client(k: int) -> None:
        while not stop.is_set():
            model.encode.remote(EncodeRequest(texts=pool[k * 8:(k + 1) * 8])).result(timeout_s=120)

    # Two clients keep the device busy without a pause (one request computing, the next queued); more
    # only lengthen each coalesced batch, and so the wait for the last ones once the test has seen enough.
    clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(2)]
    for thread in clients:
        thread.start()
    try:
        # 9 probes on a busy device, across batches: three times what Serve needs (3 failures in a row) to
        # kill a replica whose probe waits behind the batches. Stop early if the replica changed.
        def seen_enough() -> bool:
            state = model.state.remote().result()
            return state["busy_probes"] >= 9 and state["counts"].get("batches", 0) >= 2

        wait_until(lambda: model_replicas("busy") != before or seen_enough(), deadline_s=180, interval=1)
        after, state = model_replicas("busy"), model.state.remote().result()
        compute = model.info.remote().result()["compute"]
        deployment = serve.status().applications["busy"].deployments["EmbeddingModel"]
    finally:
        stop.set()
        for thread in clients:
            thread.join(150)
        serve.delete("busy")
    assert len(before) == 1 and after == before and state["pid"] == first_pid, (before, after)
    assert state["busy_probes"] >= 9 and state["counts"]["batches"] >= 2, state
    # The batches outlasted Serve's probe timeout: a probe that waited behind them would have failed.
    assert compute["longest_step_s"] > options["health_check_timeout_s"], compute
    assert deployment.status == "HEALTHY" and dict(deployment.replica_states) == {"RUNNING": 1}, deployment


def test_a_stalled_device_is_reported_unhealthy_and_replaced(busy_and_stall):
    """A forward pass blocked far beyond `stall_timeout_s`: the probe says so, and Serve replaces the replica."""
    model = busy_and_stall["stall"]  # STALL_OPTIONS, stall_timeout_s=2
    before = model_replicas("stall")
    model.hold.remote().result()
    stuck = model.encode.remote(EncodeRequest(texts=["this batch never finishes"]))

    def probe_says_stalled() -> bool:
        try:
            model.check_health.remote().result(timeout_s=10)
        except Exception as exc:  # the probe's own error, or the replica already gone
            return "compute stalled" in str(exc)
        return False

    try:
        assert wait_until(lambda: model.state.remote().result()["in_forward"] == 1, deadline_s=60)
        reported = wait_until(probe_says_stalled, deadline_s=60, interval=0.25)
        replaced = wait_until(lambda: model_replicas("stall") not in ([], before), deadline_s=120, interval=1)
    finally:
        model.release.remote()  # on the old replica, if it still runs
        del stuck
        serve.delete("stall")
    assert reported, "check_health never reported the stalled device"
    assert replaced, f"Serve did not replace the stalled replica {before}"


def test_expired_requests_never_reach_the_forward_pass(deadline_apps, direct_128):
    """While a batch holds the device, a second batch forms and waits for it; the requests in it whose
    deadline passes meanwhile get RequestTimeoutError and none of their texts is computed, the others in
    that same batch get correct vectors. A request already past its deadline on arrival is never queued."""
    model = deadline_apps["deadlines"]  # a 50 ms batch window
    pool = text_pool(100, seed=7)
    texts = [*pool, "arrives after its deadline"]
    ids = {text: tuple(t.ids) for text, t in zip(texts, direct_128.tokenize(texts), strict=True)}
    assert len(set(ids.values())) == len(texts)
    try:
        model.hold.remote().result()
        blocker = model.encode.remote(EncodeRequest(texts=pool[:4]))  # holds the device until released
        assert wait_until(lambda: model.state.remote().result()["in_forward"] == 1, deadline_s=60)
        now = time.time()
        expiring = [EncodeRequest(texts=pool[10 + 2 * i:12 + 2 * i], deadline=now + 2) for i in range(10)]
        kept = [EncodeRequest(texts=pool[40 + 2 * i:42 + 2 * i], deadline=now + 300) for i in range(10)]
        relative = [EncodeRequest(texts=[pool[70 + i]], timeout_s=2) for i in range(5)]  # handle users' form
        # One call: every request enters the queue in one loop turn, so they form the second batch together.
        mixed = model.encode_many.remote([r for pair in zip(expiring, kept, strict=True) for r in pair] + relative)
        with pytest.raises(RequestTimeoutError):
            model.encode.remote(EncodeRequest(texts=["arrives after its deadline"], deadline=now - 1)).result()
        # Every caller past its deadline has been answered; only then does the device free up.
        assert wait_until(lambda: model.state.remote().result()["counts"].get("timed_out_requests", 0) >= 16,
                           deadline_s=60)
        model.release.remote().result()
        results = mixed.result(timeout_s=120)
        assert len(blocker.result(timeout_s=120).embeddings) == 4
        state = model.state.remote().result()
    finally:
        model.release.remote()
        serve.delete("deadlines")
    got = dict(zip(map(id, [r for pair in zip(expiring, kept) for r in pair] + relative), results, strict=True))
    assert all(isinstance(got[id(r)], RequestTimeoutError) for r in expiring + relative), results
    computed = {tuple(row) for row in state["computed"]}
    never = [text for r in expiring + relative for text in r.texts] + ["arrives after its deadline"]
    assert not computed & {ids[text] for text in never}
    for request in kept:
        result = got[id(request)]
        assert not isinstance(result, BaseException), result
        expected_embeddings = direct_128.encode(request.texts)
        for text, embedding, expected in zip(request.texts, result.embeddings, expected_embeddings, strict=True):
            assert ids[text] in computed
            np.testing.assert_allclose(embedding.dense, expected.dense, atol=1e-5)
    # Dropped from a formed batch right before the device (the path under test), not only from the queue.
    assert state["counts"].get("expired_dropped", 0) >= len(expiring) + len(relative), state["counts"]


def test_http_requests_past_the_request_timeout_never_reach_the_forward_pass(serve_instance, deadline_apps, direct_128):
    """The ingress sends each request's absolute deadline: HTTP requests that wait behind a held device past
    `request_timeout_s` are answered 504 and their texts are never computed; afterwards requests get 200."""
    handle = serve.get_deployment_handle("EmbeddingModel", "http-deadlines")
    pool = text_pool(100, seed=11)

    async def state() -> dict:
        return await handle.state.remote()

    async def during_and_after_a_held_device():
        async with httpx.AsyncClient(base_url=f"{serve_instance}/deadlines", timeout=60) as client:
            await handle.hold.remote()
            blocker = handle.encode.remote(EncodeRequest(texts=pool[:4]))

            async def device_held() -> bool:
                return (await state())["in_forward"] == 1

            assert await wait_until_async(device_held, 60, interval=0.1)
            during = await asyncio.gather(*(client.post("/encode", json={"texts": pool[30 + 2 * i:32 + 2 * i]})
                                            for i in range(8)))

            async def all_timed_out_on_the_replica() -> bool:  # the model replica has answered them too
                return (await state())["counts"].get("timed_out_requests", 0) >= len(during)

            assert await wait_until_async(all_timed_out_on_the_replica, 60, interval=0.1), await state()
            await handle.release.remote()
            await blocker
            after = await client.post("/encode", json={"texts": pool[60:62]})
            return during, after, await handle.state.remote()

    try:
        during, after, state = asyncio.run(asyncio.wait_for(during_and_after_a_held_device(), 180))
    finally:
        handle.release.remote()
        serve.delete("http-deadlines")
    assert [r.status_code for r in during] == [504] * 8, [r.text for r in during]
    assert during[0].json()["error"]["code"] == "timeout"
    computed = {tuple(row) for row in state["computed"]}
    assert not computed & {tuple(t.ids) for t in direct_128.tokenize(pool[30:46])}
    assert after.status_code == 200, after.text
    for got, expected in zip(after.json()["data"], direct_128.encode(pool[60:62]), strict=True):
        np.testing.assert_allclose(got["dense"], expected.dense, atol=1e-5)


# The admission test's device computes its first batch at this speed (~20 tokens/s measured), so the work
# queued behind a held batch is estimated at minutes; it then computes at full speed.
MEASURED_S_PER_TOKEN = 0.05
# The refused requests' time budget: the work ahead of them is estimated at more than this, and no step of
# the test comes near it, so an answer that waited for the deadline could not pass for a refusal.
REFUSED_TIMEOUT_S = 60
ADMITTED_TIMEOUT_S = 600  # the admitted requests' budget: well above the work estimated ahead of them


def test_a_request_the_device_cannot_finish_by_its_deadline_is_refused_at_once_and_never_computed(
        serve_instance, config_128, direct_128):
    """Admission by cost: behind long requests on a slow device, a request whose deadline the device cannot
    make at its measured speed is refused at once (a handle caller gets `WouldMissDeadlineError`, an HTTP
    caller 429 with Retry-After) and none of its texts is computed; the admitted ones all finish.

    "At once", whatever the machine's speed: the device is held on the first admitted batch while the
    refusals come (none waited for work ahead of it), and each refused request's deadline is a minute away
    (none waited for its deadline)."""
    handle = _slow_service("admission", config_128, request_timeout_s=REFUSED_TIMEOUT_S,
                           s_per_token=MEASURED_S_PER_TOKEN)
    pool = text_pool(100, seed=13)
    try:
        handle.encode.remote(EncodeRequest(texts=["one short batch measures the speed"])).result()
        handle.hold.remote().result()
        admitted = [handle.encode.remote(EncodeRequest(texts=pool[10 + 8 * i:18 + 8 * i], timeout_s=ADMITTED_TIMEOUT_S))
                    for i in range(3)]  # ~800 tokens each: minutes at the measured speed
        assert wait_until(lambda: handle.state.remote().result()["in_forward"] == 1, deadline_s=60)
        sent = time.monotonic()
        refused_http = httpx.post(f"{serve_instance}/admission/encode", json={"texts": pool[60:62]},
                                  timeout=REFUSED_TIMEOUT_S + 30)
        with pytest.raises(WouldMissDeadlineError):
            handle.encode.remote(EncodeRequest(texts=pool[70:72], timeout_s=REFUSED_TIMEOUT_S)).result()
        # Coalesced with an admitted request in one call, as the ingress sends them: the refusal comes in
        # the stream's first item, before the admitted one is computed.
        stream = handle.options(stream=True).encode_stream.remote([
            EncodeRequest(texts=pool[80:82], timeout_s=ADMITTED_TIMEOUT_S),
            EncodeRequest(texts=pool[90:92], timeout_s=REFUSED_TIMEOUT_S)])
        first = next(stream)
        refused_within_s = time.monotonic() - sent
        during = handle.state.remote().result()
        handle.slow_down.remote(0.0).result()
        handle.release.remote().result()
        later = [answer for update in stream for answer in update.answers]
        results = [r.result(timeout_s=120) for r in admitted]
        state = handle.state.remote().result()
    finally:
        handle.release.remote()
        serve.delete("admission")
    assert refused_http.status_code == 429, refused_http.text
    assert refused_http.json()["error"]["code"] == "would_miss_deadline"
    assert int(refused_http.headers["Retry-After"]) >= 1
    assert [i for i, _ in first.answers] == [1] and isinstance(first.answers[0][1], WouldMissDeadlineError)
    # Every refusal came while the first admitted batch was held on the device (only the measuring batch
    # had finished), and long before the refused requests' deadlines.
    assert during["in_forward"] == 1 and during["counts"]["batches"] == 1, during["counts"]
    assert during["counts"]["refused_by_cost"] == 3 and refused_within_s < REFUSED_TIMEOUT_S, refused_within_s
    assert [i for i, _ in later] == [0]
    np.testing.assert_allclose(later[0][1].embeddings[0].dense, direct_128.encode(pool[80:81])[0].dense, atol=1e-5)
    computed = {tuple(row) for row in state["computed"]}
    assert not computed & {tuple(t.ids) for t in direct_128.tokenize(pool[60:62] + pool[70:72] + pool[90:92])}
    assert state["counts"]["refused_by_cost"] == 3
    for request, result in zip(range(3), results, strict=True):
        expected = direct_128.encode(pool[10 + 8 * request:18 + 8 * request])
        for got, exp in zip(result.embeddings, expected, strict=True):
            np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)


def _proxy_access_lines(pattern: bytes) -> list[bytes]:
    """The lines of Serve's HTTP proxy access logs (this Ray session's) that match `pattern`."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [line for path in logs.glob("proxy_*.log") for line in path.read_bytes().splitlines()
            if re.search(pattern, line)]


def test_a_request_whose_client_disconnects_is_dropped_before_it_reaches_the_device(serve_instance, config_128,
                                                                                   direct_128):
    """An HTTP client that gives up while its request waits behind a busy device: the ingress cancels the
    request on the model replica, none of its texts is computed, Serve logs it as 499 (client closed
    request), and the replica goes on serving. The device is held until then: the request cannot finish
    before its client leaves, however fast the machine."""
    handle = _slow_service("disconnect", config_128, request_timeout_s=120)
    pool = text_pool(100, seed=17)

    async def disconnect_once_queued() -> None:
        """POST the texts, wait until the model replica has queued them, then close the connection."""
        async with httpx.AsyncClient(base_url=f"{serve_instance}/disconnect", timeout=120) as client:
            request = asyncio.create_task(client.post("/encode", json={"texts": pool[40:44]}))

            async def queued_on_the_replica() -> bool:
                return (await handle.record_autoscaling_stats.remote())[QUEUED_TOKENS_METRIC] > 0

            assert await wait_until_async(queued_on_the_replica, 60, interval=0.05)
            assert not request.done()
            request.cancel()  # the client gives up; leaving the client closes its connection
            with contextlib.suppress(asyncio.CancelledError):
                await request

    try:
        handle.hold.remote().result()
        busy = handle.encode.remote(EncodeRequest(texts=pool[:16]))  # holds the device until released
        assert wait_until(lambda: handle.state.remote().result()["in_forward"] == 1, deadline_s=60)
        asyncio.run(disconnect_once_queued())
        assert wait_until(lambda: handle.state.remote().result()["counts"].get("cancelled_requests") == 1,
                          deadline_s=30)
        handle.release.remote().result()
        busy.result(timeout_s=120)
        after = httpx.post(f"{serve_instance}/disconnect/encode", json={"texts": pool[60:62]}, timeout=60)
        state = handle.state.remote().result()
        # Serve's proxy logs the request it could not answer as 499 (its access log is written when the
        # request ends, and flushed to the file asynchronously).
        logged_499 = wait_until(lambda: bool(_proxy_access_lines(rb"POST /disconnect\S* 499 ")), 30)
    finally:
        handle.release.remote()
        serve.delete("disconnect")
    computed = {tuple(row) for row in state["computed"]}
    assert not computed & {tuple(t.ids) for t in direct_128.tokenize(pool[40:44])}
    assert logged_499, _proxy_access_lines(rb"POST /disconnect")
    assert after.status_code == 200, after.text
    np.testing.assert_allclose(after.json()["data"][0]["dense"], direct_128.encode(pool[60:61])[0].dense, atol=1e-5)


def test_admission_with_nothing_queued_ahead_refuses_only_a_request_far_past_its_deadline():
    """With an empty queue a request is admitted unless it alone needs over twice the time it has (the
    estimate may come from other texts, and only an admitted request refreshes it); such a one is refused
    as too large for its deadline (413), not as overload. Behind a queue, one that cannot finish by its
    deadline is refused, naming when to retry."""
    from serve_app.serving.admission import refusal

    now = 1000.0
    assert refusal(150, now + 1.0, now, queued_tokens=0, tokens_per_s=100.0) is None  # 1.5 s of 1 s: may make it
    too_large = refusal(250, now + 1.0, now, queued_tokens=0, tokens_per_s=100.0)
    assert isinstance(too_large, DeadlineTooShortError) and too_large.expected_s == 2.5
    assert to_api_error(too_large).status == 413 and to_api_error(too_large).code == "exceeds_deadline"
    assert refusal(500, None, now, queued_tokens=10**6, tokens_per_s=1.0) is None  # no deadline
    assert refusal(500, now + 0.1, now, queued_tokens=10**6, tokens_per_s=None) is None  # nothing measured yet
    assert refusal(100, now + 2.4, now, queued_tokens=100, tokens_per_s=100.0) is None  # 2 s of 2.4 s: in time
    refused = refusal(100, now + 1.0, now, queued_tokens=300, tokens_per_s=100.0)
    assert isinstance(refused, WouldMissDeadlineError)
    assert (refused.expected_s, refused.remaining_s, refused.retry_after_s) == (4.0, 1.0, 3.0)


def test_admission_behind_a_queue_keeps_a_margin_so_the_last_request_admitted_is_not_a_504():
    """Under sustained overload the queue fills up to the deadline: a request expected to finish just at its
    deadline would miss it whenever the device runs a little slower than its average, after all its work
    (the full-size goodput run: 3 of 26 requests admitted by 4 callers got 504). It is refused instead."""
    from serve_app.serving.admission import refusal

    now = 1000.0
    on_the_edge = refusal(100, now + 2.0, now, queued_tokens=100, tokens_per_s=100.0)  # 2 s of work, 2 s left
    assert isinstance(on_the_edge, WouldMissDeadlineError) and on_the_edge.retry_after_s == 1.0
    assert refusal(100, now + 2.0, now, queued_tokens=60, tokens_per_s=100.0) is None  # 1.6 s of 2 s


def test_admission_counts_only_what_is_left_of_the_batch_on_the_device():
    """A request arriving near the end of a long batch is charged what is left of it at the measured speed,
    not the whole batch: behind a 35 s batch that has run 30 s, a 35 s request has 40 s of work ahead of its
    60 s deadline and is admitted (charged the whole batch, 70 s, it was refused and the device then idled)."""
    from serve_app.serving.admission import refusal, tokens_ahead

    now = 1000.0
    assert tokens_ahead(3500, 3500, on_device_s=30.0, tokens_per_s=100.0) == 500
    assert tokens_ahead(5000, 3500, on_device_s=30.0, tokens_per_s=100.0) == 2000  # queued behind it: all
    assert tokens_ahead(3500, 3500, on_device_s=50.0, tokens_per_s=100.0) == 0  # slower than expected: at most all
    assert tokens_ahead(3500, 0, on_device_s=0.0, tokens_per_s=100.0) == 3500  # nothing on the device yet
    assert tokens_ahead(3500, 3500, on_device_s=30.0, tokens_per_s=None) == 3500  # no speed measured
    ahead = tokens_ahead(3500, 3500, on_device_s=30.0, tokens_per_s=100.0)
    assert refusal(3500, now + 60.0, now, queued_tokens=ahead, tokens_per_s=100.0) is None
    assert isinstance(refusal(3500, now + 60.0, now, queued_tokens=3500, tokens_per_s=100.0), WouldMissDeadlineError)
