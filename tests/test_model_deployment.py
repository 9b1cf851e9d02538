"""The model deployment through Python handles: typed API, coalescing, live reconfigure, health."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
import ray
import torch
from ray import serve

from serve_app.app import build_model_deployment, model_deployment_options
from serve_app.core.errors import InputTooLongError, InvalidTextError
from serve_app.core.scoring import dense_score, sparse_score
from serve_app.serving.config import AppArgs
from serve_app.serving.model import EmbeddingModel
from serve_app.serving.retriever import build_retriever_app
from serve_app.serving.schemas import EncodeRequest, EncodeResult
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def args(encoder_config) -> AppArgs:
    return AppArgs(encoder=encoder_config)


class BreakableModel(EmbeddingModel):
    """The real model deployment, plus a way to damage its weights in place (as a faulty device or an
    fp16 overflow would)."""

    async def damage(self, value: float) -> None:
        norm = self._encoder.transformer.encoder.layer[-1].output.LayerNorm
        with torch.no_grad():
            norm.weight.fill_(value)
            norm.bias.fill_(value)


@pytest.fixture(scope="module")
def apps(serve_instance, args) -> dict:
    """Handles of four apps deployed together (their replicas start side by side): "model", shared by
    the tests that only call it; "breakable", "metered" and "retriever", each used (and deleted) by one
    test only. Half a CPU for the two single-test model replicas, so that all four fit the suite's Ray
    with a slot left for the one that must fail to start (no test here depends on a replica's CPUs)."""
    half = {**model_deployment_options()["ray_actor_options"], "num_cpus": 0.5}
    breakable = {**model_deployment_options(), "name": "Breakable", "health_check_period_s": 600,  # we probe
                 "ray_actor_options": half}
    metered = {"name": "Metered", "ray_actor_options": half}
    no_cache = AppArgs.model_validate({**args.model_dump(), "cache": {"backend": "off"}})
    names = ["model", "breakable", "metered", "retriever"]
    handles = serve.run_many([
        serve.RunTarget(build_model_deployment(args), name="model", route_prefix=None),
        serve.RunTarget(serve.deployment(BreakableModel, **breakable).bind(args.encoder), name="breakable",
                        route_prefix=None),
        serve.RunTarget(build_model_deployment(no_cache, metered), name="metered", route_prefix=None),
        serve.RunTarget(build_retriever_app(args), name="retriever", route_prefix=None)])
    return dict(zip(names, handles, strict=True))


@pytest.fixture(scope="module")
def model(apps):
    return apps["model"]


def test_typed_handle_call(model, direct, hf_tokenizer, args):
    texts = ["東京", "library", " ".join(["a long text about rivers"] * 30)]  # the last one is cut
    result = model.encode.remote(EncodeRequest(texts=texts, dense=True, sparse=True)).result()
    assert isinstance(result, EncodeResult)
    for got, exp in zip(result.embeddings, direct.encode(texts), strict=True):
        np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
        np.testing.assert_array_equal(got.sparse_indices, exp.sparse_indices)
        assert got.colbert is None
    # The tokens encoded, counted by the checkpoint's own tokenizer, each text cut to max_length.
    counts = [min(len(ids), args.encoder.max_length) for ids in hf_tokenizer(texts)["input_ids"]]
    assert counts[-1] == args.encoder.max_length  # the cut counts only what was encoded
    assert result.prompt_tokens == sum(counts)


def test_mixed_output_requests_share_a_batch_but_not_outputs(model, direct, mixed_texts):
    kinds = [dict(sparse=False), dict(dense=False, sparse=False, colbert=True), dict(dense=False, sparse_tokens=True)]
    requests = [EncodeRequest(texts=mixed_texts[i % 8: i % 8 + 1 + i % 2], **kinds[i % 3]) for i in range(30)]
    responses = [model.encode.remote(r) for r in requests]  # in flight together
    expected = dict(zip(mixed_texts, direct.encode(mixed_texts, colbert=True, sparse_tokens=True), strict=True))
    shared = 0
    for request, response in zip(requests, responses, strict=True):
        result = response.result()
        shared = max(shared, result.batch_requests)
        assert len(result.embeddings) == len(request.texts)
        for text, got in zip(request.texts, result.embeddings, strict=True):
            exp = expected[text]
            assert (got.dense is None) != request.dense
            assert (got.colbert is None) != request.colbert
            assert (got.sparse_indices is None) != request.sparse
            if request.dense:
                np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
            if request.colbert:
                np.testing.assert_allclose(got.colbert, exp.colbert, atol=1e-5)
            if request.sparse:
                np.testing.assert_array_equal(got.sparse_indices, exp.sparse_indices)
            assert got.sparse_tokens == (exp.sparse_tokens if request.sparse_tokens else None)
    assert shared > 1


def test_a_coalesced_call_fails_only_the_requests_whose_own_texts_fail(model, direct):
    """`encode_many` tokenizes all its requests' texts in one call; a text over max_length (not to be cut)
    or one that is not valid Unicode fails only its own request, named by its place there."""
    long_text = " ".join(f"word{i % 50} river" for i in range(200))
    requests = [EncodeRequest(texts=["first text", "東京 second"]),
                EncodeRequest(texts=["fits", long_text], truncate=False),
                EncodeRequest(texts=["fine", "bad \ud800"]),
                EncodeRequest(texts=[long_text, "short"], overflow="chunk", colbert=True),
                EncodeRequest(texts=[long_text])]
    model.encode.remote(EncodeRequest(texts=["東京 second"])).result()  # a cache hit among misses in request 0
    results = model.encode_many.remote(requests).result()
    assert isinstance(results[1], InputTooLongError) and results[1].index == 1
    assert isinstance(results[2], InvalidTextError) and results[2].index == 1
    for i in (0, 3, 4):
        request = requests[i]
        expected = direct.encode(request.texts, colbert=request.colbert, overflow=request.overflow)
        assert isinstance(results[i], EncodeResult)
        for got, exp in zip(results[i].embeddings, expected, strict=True):
            np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
            assert got.n_tokens == exp.n_tokens


def test_request_over_the_batch_token_budget_is_refused(model):
    from serve_app.core.errors import RequestTooLargeError

    with pytest.raises(RequestTooLargeError):
        model.encode.remote(EncodeRequest(texts=["word " * 60] * 300)).result()


def test_info_gives_the_replicas_start_up_marks_in_order(model):
    """`bench/cold_start.py` splits a replica's start with these: imports, constructor, model load, ready."""
    marks = model.info.remote().result()["startup"]
    order = ["import_started", "imported", "init_started", "model_loaded", "ready"]
    assert list(marks) == order
    assert [marks[k] for k in order] == sorted(marks.values())


def test_reconfigure_is_live(model):
    """Serve calls `reconfigure(user_config)` on a config update; the knobs change without a restart."""
    before = model.info.remote().result()
    for knobs in ({"max_queue_tokens": 4096, "batch_wait_timeout_s": 0.02, "max_concurrent_batches": 2,
                   "stall_timeout_s": 600.0, "scheduling": "fifo", "bulk_max_queue_tokens": 128,
                   "bulk_min_share": 0.5, "bulk_max_wait_s": 1.0, "bulk_quiet_s": 0.0},
                  {"max_queue_tokens": 8192, "batch_wait_timeout_s": 0.001, "max_concurrent_batches": 1,
                   "stall_timeout_s": 60.0, "scheduling": "priority", "bulk_max_queue_tokens": 64,
                   "bulk_min_share": 0.0, "bulk_max_wait_s": 30.0, "bulk_quiet_s": 5.0}):
        model.reconfigure.remote(knobs).result()
        after = model.info.remote().result()
        assert after["pid"] == before["pid"] and after["batching"] == knobs
        responses = [model.encode.remote(EncodeRequest(texts=[f"still works {i}"])) for i in range(8)]
        assert all(r.result().embeddings[0].dense is not None for r in responses)
    with pytest.raises(Exception, match="max_queue_tokens"):
        model.reconfigure.remote({"max_queue_tokens": 0}).result()
    model.reconfigure.remote(before["batching"]).result()


def test_queue_budget_that_cannot_hold_one_max_length_text_is_refused(serve_instance, args, model):
    """On reconfigure (the running settings stay) and at replica start, for a user_config the builder
    never saw (as one under `deployments:` in a YAML file); the error names both settings."""
    before = model.info.remote().result()["batching"]
    too_small = {"max_queue_tokens": args.encoder.max_length - 1}
    with pytest.raises(Exception, match=rf"max_queue_tokens \({too_small['max_queue_tokens']}\).*max_length"):
        model.reconfigure.remote(too_small).result()
    with pytest.raises(Exception, match="max_batch_tokens was renamed.*max_queue_tokens"):
        model.reconfigure.remote({"max_batch_tokens": 8192}).result()
    assert model.info.remote().result()["batching"] == before
    assert model.encode.remote(EncodeRequest(texts=["still served"])).result().embeddings[0].dense is not None
    options = {**model_deployment_options(), "name": "TooSmall", "user_config": too_small,
               "max_constructor_retry_count": 1,  # fail once, not the default several times
               "ray_actor_options": {**model_deployment_options()["ray_actor_options"], "num_cpus": 0.5}}  # `apps`
    with pytest.raises(RuntimeError, match="TooSmall"):
        serve.run(serve.deployment(EmbeddingModel, **options).bind(args.encoder), name="too-small", route_prefix=None)
    message = serve.status().applications["too-small"].deployments["TooSmall"].message
    serve.delete("too-small")
    assert re.search(rf"max_queue_tokens \({too_small['max_queue_tokens']}\).*max_length", message), message


def test_check_health_fails_when_the_model_returns_garbage(apps):
    """Serve's probe encodes for real: a sound model passes, one whose vectors are NaN or zero fails."""
    model = apps["breakable"]  # Serve's own probe every 600 s: the test probes
    try:
        assert model.check_health.remote().result() is None
        for value, reason in ((float("nan"), "non-finite values"), (0.0, "all zeros")):
            model.damage.remote(value).result()
            with pytest.raises(RuntimeError, match=reason):
                model.check_health.remote().result()
    finally:
        serve.delete("breakable")


def _buckets(metrics: str, name: str, deployment: str) -> dict[float, float]:
    """One deployment's cumulative histogram buckets (upper bound -> count) in Prometheus text."""
    buckets: dict[float, float] = {}
    for labels, value in re.findall(rf"^ray_{name}_bucket{{([^}}]*)}} (\S+)$", metrics, re.MULTILINE):
        if f'deployment="{deployment}"' in labels:
            bound = float(re.search(r'le="([^"]+)"', labels).group(1))
            buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def test_queue_latency_metric_records_each_requests_wait_before_its_batch(apps):
    """`bge_m3_queue_latency_ms` gets one observation per request that reached a batch: its wait from
    enqueue to batch start, the same figure as the request's own `timings.queue_ms` (read from Ray's
    Prometheus export, as a user would)."""
    model = apps["metered"]  # its own deployment, "Metered", cache off: no other test's requests
    try:
        responses = [model.encode.remote(EncodeRequest(texts=[f"queued text {i}", "東京"])) for i in range(12)]
        waits = [r.result().timings.queue_ms for r in responses]
        [port] = [n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]]
        buckets: dict[float, float] = {}

        def all_exported() -> bool:  # Ray exports every few seconds
            buckets.clear()
            buckets.update(_buckets(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text,
                                    "bge_m3_queue_latency_ms", "Metered"))
            return buckets.get(float("inf"), 0) >= len(waits)

        assert wait_until(all_exported, 60, interval=1), (buckets, waits)
        # Bucket counts are exact (Ray approximates the histogram's sum): each wait is in its bucket.
        assert buckets == {bound: float(sum(w <= bound for w in waits)) for bound in buckets}, (buckets, waits)
        assert buckets[float("inf")] == len(waits)
    finally:
        serve.delete("metered")


def test_retriever_calls_the_model_through_a_handle(apps, direct):
    retriever = apps["retriever"]
    docs = ["東京 is the capital of japan", "rivers and mountains", "the library near the station",
            "coffee in the morning", "京都 and 大阪"]
    assert retriever.index.remote(docs).result() == len(docs)
    hits = retriever.search.remote("capital of japan 東京", 3).result()
    q, *d = direct.encode(["capital of japan 東京", *docs])
    expected = sorted(((dense_score(q, x) + 0.3 * sparse_score(q, x)) / 1.3, i) for i, x in enumerate(d))[::-1][:3]
    assert [h["doc_id"] for h in hits] == [i for _, i in expected]
    assert hits[0]["score"] == pytest.approx(expected[0][0], abs=1e-5)
    serve.delete("retriever")


def test_redis_cache_is_shared_and_never_fails_a_request(serve_instance, args, direct, redis_server):
    """Two model deployments (as two replicas would) share one real Redis; with Redis gone, requests still
    succeed and the failure shows in the cache stats."""
    import redis

    port, start, stop = redis_server
    config = AppArgs.model_validate({**args.model_dump(), "cache": {"backend": "redis",
                                                                    "redis_url": f"redis://127.0.0.1:{port}/0"}})
    # Deployed together: their replicas start side by side.
    first, second = serve.run_many([
        serve.RunTarget(build_model_deployment(config, {"name": "CachedA"}), name="cached-a", route_prefix=None),
        serve.RunTarget(build_model_deployment(config, {"name": "CachedB"}), name="cached-b", route_prefix=None)])
    request = EncodeRequest(texts=["shared through redis", "東京 cache"], dense=True, sparse=True, colbert=True)
    computed = first.encode.remote(request).result()
    assert computed.batch_requests >= 1 and redis.Redis(port=port).dbsize() == 2
    shared = second.encode.remote(request).result()
    assert shared.batch_requests == 0  # answered from the other deployment's entries, no model call
    for got, exp in zip(shared.embeddings, direct.encode(request.texts, colbert=True), strict=True):
        np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
        np.testing.assert_array_equal(got.sparse_indices, exp.sparse_indices)
        np.testing.assert_allclose(got.colbert, exp.colbert, atol=1e-5)
    stop()
    try:
        down = second.encode.remote(request.model_copy(update={"texts": ["redis is down now"]})).result()
        np.testing.assert_allclose(down.embeddings[0].dense, direct.encode(["redis is down now"])[0].dense, atol=1e-5)
        stats = second.info.remote().result()["cache"]
        assert stats["backend"] == "redis" and stats["errors"] >= 1 and stats["hits"] == 2
    finally:
        start()
    serve.delete("cached-a")
    serve.delete("cached-b")
