"""gRPC on the real service (Serve's gRPC proxy, the small checkpoint, fp32): a client generated from TEI's
`tei.proto` as a TEI user would generate it, and one of this server's `bge_m3.proto`, get what the HTTP
routes of the same app answer; streams answer in order; auth, limits, deadline, overload and health codes."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray import serve

from serve_app.app import build_app, ingress_deployment_options, model_deployment_options
from serve_app.core.config import Instructions
from serve_app.ingress import Ingress
from serve_app.serving.config import AppArgs, AuthConfig, RequestLimits
from serve_app.serving.deployments import MODEL_DEPLOYMENT
from serve_app.serving.schemas import EncodeRequest
from tests.support.devices import SlowDevice
from tests.support.grpc_clients import compile_clients
from tests.support.waiting import wait_until

KEY = "sk-grpc-31c7"
MAX_TEXTS = 8
MAX_BODY = 6000
INSTRUCTIONS = {"query": "Represent this query: ", "passage": "passage: "}
TEXTS = ["what is BGE-M3", "東京 library museum", "sparse lexical weights", "ColBERT vectors 日本語"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """`tei_pb2`, `tei_pb2_grpc`, `bge_m3_pb2`, `bge_m3_pb2_grpc`, compiled from the `.proto` files as a
    client of either API builds its stubs."""
    return compile_clients(tmp_path_factory.mktemp("client"))


@pytest.fixture(scope="module")
def apps(serve_instance, grpc_target, encoder_config, tmp_path_factory):
    """Two apps deployed together (the suite's Ray has 4 CPUs): "grpc" at /grpc (instructions configured, at
    most MAX_TEXTS texts and MAX_BODY bytes a request) and "grpc-held" (API keys; a `SlowDevice` a test holds
    busy; at most 3 pending requests)."""
    keys = tmp_path_factory.mktemp("secrets") / "keys"
    keys.write_text(KEY + "\n")
    config = encoder_config.model_copy(update={"instructions": Instructions(**INSTRUCTIONS)})
    ingress = serve.deployment(serve.ingress()(Ingress), **ingress_deployment_options())
    held = ingress.bind(serve.deployment(SlowDevice, **model_deployment_options()).bind(encoder_config),
                        AppArgs(encoder=encoder_config, auth=AuthConfig(api_keys_file=str(keys)),
                                limits=RequestLimits(max_pending_requests=3, request_timeout_s=30.0)))
    serve.run_many([
        serve.RunTarget(build_app({"encoder": config.model_dump(), "limits": {"max_texts_per_request": MAX_TEXTS,
                                                                            "max_body_bytes": MAX_BODY}}),
                        name="grpc", route_prefix="/grpc"),
        serve.RunTarget(held, name="grpc-held", route_prefix="/grpc-held")])
    yield serve_instance
    serve.delete("grpc-held", _blocking=False)


@pytest.fixture(scope="module")
def channel(apps, grpc_target):
    with grpc.insecure_channel(grpc_target) as chan:
        yield chan


@pytest.fixture(scope="module")
def http(apps):
    with httpx.Client(base_url=f"{apps}/grpc", timeout=60) as client:
        yield client


APP = (("application", "grpc"),)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value


def test_tei_embed_methods_equal_the_http_routes(channel, http, generated):
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    embed = stubs.EmbedStub(channel)
    for text in TEXTS:
        for prompt in (None, "query"):
            extra = {"prompt_name": prompt} if prompt else {}
            dense = embed.Embed(tei.EmbedRequest(inputs=text, **extra), metadata=APP)
            np.testing.assert_allclose(dense.embeddings, http.post("/embed", json={"inputs": text, **extra}).json()[0],
                                       atol=1e-6)
            assert dense.metadata.compute_tokens > 0 and dense.metadata.compute_chars == len(text)
        sparse = embed.EmbedSparse(tei.EmbedSparseRequest(inputs=text), metadata=APP)
        expected = http.post("/embed_sparse", json={"inputs": text}).json()[0]
        assert [v.index for v in sparse.sparse_embeddings] == [p["index"] for p in expected]
        np.testing.assert_allclose([v.value for v in sparse.sparse_embeddings], [p["value"] for p in expected],
                                   atol=1e-6)
        every = embed.EmbedAll(tei.EmbedAllRequest(inputs=text), metadata=APP)
        np.testing.assert_allclose([row.embeddings for row in every.token_embeddings],
                                   http.post("/embed_all", json={"inputs": text}).json()[0], atol=1e-6)
    # The query instruction changes the vector: prompt_name reached the encoder.
    plain = embed.Embed(tei.EmbedRequest(inputs=TEXTS[0]), metadata=APP).embeddings
    query = embed.Embed(tei.EmbedRequest(inputs=TEXTS[0], prompt_name="query"), metadata=APP).embeddings
    assert not np.allclose(plain, query)


def test_tei_streams_answer_each_request_in_order(channel, http, generated):
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    texts = [f"{word} stream order check" for word in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
                                                       "golf", "hotel")]  # MAX_TEXTS: one HTTP call to compare
    expected = http.post("/embed", json={"inputs": texts}).json()
    answers = list(stubs.EmbedStub(channel).EmbedStream(iter(tei.EmbedRequest(inputs=t) for t in texts),
                                                        metadata=APP))
    assert len(answers) == len(texts)
    for got, exp in zip(answers, expected, strict=True):
        np.testing.assert_allclose(got.embeddings, exp, atol=1e-6)
    sparse = list(stubs.EmbedStub(channel).EmbedSparseStream(
        iter(tei.EmbedSparseRequest(inputs=t) for t in texts[:3]), metadata=APP))
    assert [[v.index for v in a.sparse_embeddings] for a in sparse] == [
        [p["index"] for p in row] for row in http.post("/embed_sparse", json={"inputs": texts[:3]}).json()]
    every = list(stubs.EmbedStub(channel).EmbedAllStream(iter(tei.EmbedAllRequest(inputs=t) for t in texts[:3]),
                                                         metadata=APP))
    assert [len(a.token_embeddings) for a in every] == [
        len(rows) for rows in http.post("/embed_all", json={"inputs": texts[:3]}).json()]
    tokenizer = stubs.TokenizeStub(channel)
    tokens = list(tokenizer.TokenizeStream(iter(tei.EncodeRequest(inputs=t, add_special_tokens=True) for t in texts),
                                           metadata=APP))
    ids = [[t.id for t in answer.tokens] for answer in tokens]
    assert ids == [[t["id"] for t in row] for row in http.post("/tokenize", json={"inputs": texts}).json()]
    decoded = list(tokenizer.DecodeStream(iter(tei.DecodeRequest(ids=row, skip_special_tokens=True) for row in ids),
                                          metadata=APP))
    assert [d.text for d in decoded] == http.post("/decode", json={"ids": ids}).json()


def test_a_streams_concurrent_tokenize_calls_to_the_model_never_hang(channel, http, generated):
    """A stream's messages are computed side by side, each its own call to the model replica from one
    Serve request. Made in that request's context, about one stream in thirty lost a call and hung until
    the ingress's 60 s timeout (`serving.request_scope`); each stream here must answer every message,
    correctly, well within its deadline."""
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    texts = [f"{first} {second} tokens" for first in words for second in words[:2]]  # 16 messages a stream
    expected = [[t["id"] for t in row] for half in (texts[:MAX_TEXTS], texts[MAX_TEXTS:])
                for row in http.post("/tokenize", json={"inputs": half}).json()]
    tokenizer = stubs.TokenizeStub(channel)
    for attempt in range(100):
        answers = tokenizer.TokenizeStream(iter(tei.EncodeRequest(inputs=t, add_special_tokens=True) for t in texts),
                                           metadata=APP, timeout=10)
        assert [[t.id for t in answer.tokens] for answer in answers] == expected, f"stream {attempt}"


def test_tei_tokenize_decode_and_info_equal_the_http_routes(channel, http, generated):
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    tokenizer = stubs.TokenizeStub(channel)
    for text in ("hello 東京", "東京 library museum"):
        for special in (True, False):
            got = tokenizer.Tokenize(tei.EncodeRequest(inputs=text, add_special_tokens=special), metadata=APP)
            expected = http.post("/tokenize", json={"inputs": text, "add_special_tokens": special}).json()[0]
            assert [{"id": t.id, "text": t.text, "special": t.special,
                     "start": t.start if t.HasField("start") else None,
                     "stop": t.stop if t.HasField("stop") else None} for t in got.tokens] == expected
            ids = [t["id"] for t in expected]
            assert tokenizer.Decode(tei.DecodeRequest(ids=ids, skip_special_tokens=True), metadata=APP).text == \
                http.post("/decode", json={"ids": ids}).json()[0]
    info = stubs.InfoStub(channel).Info(tei.InfoRequest(), metadata=APP)
    facts = http.get("/info").json()
    assert (info.model_id, info.model_dtype, info.max_input_length, info.max_batch_tokens,
            info.max_client_batch_size, info.model_type) == (
        facts["model_id"], facts["model_dtype"], facts["max_input_length"], facts["max_batch_tokens"],
        facts["max_client_batch_size"], tei.MODEL_TYPE_EMBEDDING)


def test_tei_predict_and_rerank_are_unimplemented_with_a_message(channel, generated):
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    for call in (lambda: stubs.PredictStub(channel).Predict(tei.PredictRequest(inputs="x"), metadata=APP),
                 lambda: stubs.RerankStub(channel).Rerank(tei.RerankRequest(query="q", texts=["a"]), metadata=APP),
                 lambda: list(stubs.PredictStub(channel).PredictStream(iter([tei.PredictRequest(inputs="x")]),
                                                                       metadata=APP))):
        error = _code(call)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "head" in error.details(), error


def test_native_encode_equals_http_encode(channel, http, generated):
    pb, stubs = generated["bge_m3_pb2"], generated["bge_m3_pb2_grpc"]
    embedder = stubs.EmbedderStub(channel)
    answer = embedder.Encode(pb.EncodeRequest(texts=TEXTS, dense=True, sparse=True, colbert=True, sparse_tokens=True,
                                              input_type=pb.INPUT_TYPE_PASSAGE), metadata=APP)
    expected = http.post("/encode", json={"texts": TEXTS, "dense": True, "sparse": True, "colbert": True,
                                          "sparse_tokens": True, "input_type": "passage"}).json()
    assert (answer.dim, answer.prompt_tokens) == (len(expected["data"][0]["dense"]), expected["usage"]["prompt_tokens"])
    ids = http.post("/encode", json={"texts": TEXTS, "sparse": True, "input_type": "passage"}).json()
    for got, exp, exp_ids in zip(answer.embeddings, expected["data"], ids["data"], strict=True):
        np.testing.assert_allclose(np.frombuffer(got.dense, "<f4"), exp["dense"], atol=1e-6)
        assert list(got.sparse_ids) == exp_ids["sparse"]["indices"]
        assert list(got.sparse_tokens) == exp["sparse"]["tokens"]
        np.testing.assert_allclose(np.frombuffer(got.sparse_weights, "<f4"), exp["sparse"]["values"], atol=1e-6)
        np.testing.assert_allclose(np.frombuffer(got.colbert, "<f4").reshape(got.colbert_rows, -1), exp["colbert"],
                                   atol=1e-6)
        assert (got.n_tokens, got.truncated) == (exp["n_tokens"], exp["truncated"])
    # Token ids in, float16 ColBERT out; unset outputs take /encode's defaults (dense only).
    token_ids = [[t["id"] for t in row] for row in http.post("/tokenize", json={"inputs": TEXTS[:2]}).json()]
    by_ids = embedder.Encode(pb.EncodeRequest(token_ids=[pb.TokenIds(ids=row) for row in token_ids], colbert=True,
                                              colbert_encoding=pb.VECTOR_ENCODING_FLOAT16), metadata=APP)
    expected = http.post("/encode", json={"token_ids": token_ids, "colbert": True}).json()["data"]
    for got, exp in zip(by_ids.embeddings, expected, strict=True):
        np.testing.assert_allclose(np.frombuffer(got.dense, "<f4"), exp["dense"], atol=1e-6)
        np.testing.assert_allclose(np.frombuffer(got.colbert, "<f2").reshape(got.colbert_rows, -1), exp["colbert"],
                                   atol=2e-3)
    default = embedder.Encode(pb.EncodeRequest(texts=TEXTS[:1]), metadata=APP).embeddings[0]
    http_default = http.post("/encode", json={"texts": TEXTS[:1]}).json()["data"][0]
    assert {name for name in ("dense", "sparse", "colbert") if name in http_default} == {
        name for name, field in (("dense", "dense"), ("sparse", "sparse_weights"), ("colbert", "colbert"))
        if getattr(default, field)}


def test_native_score_and_info_equal_http(channel, http, generated):
    pb, stubs = generated["bge_m3_pb2"], generated["bge_m3_pb2_grpc"]
    embedder = stubs.EmbedderStub(channel)
    got = embedder.Score(pb.ScoreRequest(query=TEXTS[0], passages=TEXTS[1:],
                                         weights=pb.ScoreWeights(dense=0.4, sparse=0.2, colbert=0.4)), metadata=APP)
    expected = http.post("/score", json={"query": TEXTS[0], "passages": TEXTS[1:],
                                         "weights": {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}}).json()["data"]
    for score, exp in zip(got.scores, expected, strict=True):
        np.testing.assert_allclose([score.dense, score.sparse, score.colbert, score.sparse_dense,
                                    score.colbert_sparse_dense],
                                   [exp[k] for k in ("dense", "sparse", "colbert", "sparse+dense",
                                                     "colbert+sparse+dense")], atol=1e-5)
    info = embedder.Info(pb.InfoRequest(), metadata=APP)
    facts = http.get("/info").json()
    assert (info.model, info.dim, info.max_length, info.max_texts_per_request) == (
        facts["model"], facts["dim"], facts["max_length"], MAX_TEXTS)
    # The fingerprint is the one every encode answer of the model carries (what the offline job checks).
    assert info.fingerprint and info.fingerprint == serve.get_deployment_handle(MODEL_DEPLOYMENT, "grpc").encode.remote(
        EncodeRequest(texts=["fingerprint"])).result().identity


def test_bad_input_is_invalid_argument_naming_the_field_and_the_replica_stays_healthy(channel, generated):
    tei, tei_stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    pb, stubs = generated["bge_m3_pb2"], generated["bge_m3_pb2_grpc"]
    embed, embedder = tei_stubs.EmbedStub(channel), stubs.EmbedderStub(channel)
    cases = {
        "inputs[0]": lambda: embed.Embed(tei.EmbedRequest(inputs="word " * 100, truncate=False), metadata=APP),
        "normalize": lambda: embed.Embed(tei.EmbedRequest(inputs="x", normalize=False), metadata=APP),
        "truncation_direction": lambda: embed.EmbedSparse(tei.EmbedSparseRequest(
            inputs="x", truncation_direction=tei.TRUNCATION_DIRECTION_LEFT), metadata=APP),
        "prompt_name": lambda: embed.EmbedAll(tei.EmbedAllRequest(inputs="x", prompt_name="document"), metadata=APP),
        "dimensions": lambda: embed.Embed(tei.EmbedRequest(inputs="x", dimensions=3), metadata=APP),
        "texts": lambda: embedder.Encode(pb.EncodeRequest(texts=["t"] * (MAX_TEXTS + 1)), metadata=APP),
        "token_ids[0][1]": lambda: embedder.Encode(pb.EncodeRequest(token_ids=[pb.TokenIds(ids=[0, 10**9, 2])]),
                                                   metadata=APP),
        "body": lambda: embedder.Encode(pb.EncodeRequest(texts=["long " * (MAX_BODY // 5)]), metadata=APP),
        "x-priority": lambda: embedder.Encode(pb.EncodeRequest(texts=["x"]), metadata=(*APP, ("x-priority", "urgent"))),
        "priority": lambda: embedder.Encode(pb.EncodeRequest(texts=["x"], priority=pb.PRIORITY_BULK),
                                            metadata=(*APP, ("x-priority", "interactive"))),
    }
    for field, call in cases.items():
        error = _code(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error)
        assert dict(error.trailing_metadata())["error-param"] == field, (field, error.trailing_metadata())
        assert error.details().startswith(field.split("[")[0]) or field in error.details(), (field, error.details())
    error = _code(cases["texts"])
    assert str(MAX_TEXTS) in error.details()  # the limit is named
    # A failing message of a stream ends it with that message's status, named by its place.
    error = _code(lambda: list(embed.EmbedStream(iter([tei.EmbedRequest(inputs="fine"),
                                                       tei.EmbedRequest(inputs="x", normalize=False)]),
                                                 metadata=APP)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("message 1: normalize")
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=APP)
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_health_serving_and_unknown_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tei.v1.Embed", "bge_m3.v1.Embedder"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), metadata=APP).status == \
            health_pb2.HealthCheckResponse.SERVING
    error = _code(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope.v1.Svc"), metadata=APP))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(), metadata=APP, timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_api_keys_from_authorization_metadata(channel, generated):
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    embed = stubs.EmbedStub(channel)
    app = (("application", "grpc-held"),)
    request = tei.EmbedRequest(inputs="keyed")
    assert _code(lambda: embed.Embed(request, metadata=app)).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = (*app, ("authorization", "Bearer sk-wrong"))
    assert _code(lambda: embed.Embed(request, metadata=wrong)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: list(embed.EmbedStream(iter([request]), metadata=wrong))).code() == \
        grpc.StatusCode.PERMISSION_DENIED
    assert len(embed.Embed(request, metadata=(*app, ("authorization", f"Bearer {KEY}"))).embeddings) > 0
    # Health is public, as /health is.
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=app).status == \
        health_pb2.HealthCheckResponse.SERVING


def _held(generated, grpc_target, requests: int, word: str, deadline_s: float = 2.0):
    """`requests` Embed calls at once on "grpc-held", each with a client deadline of `deadline_s`, while its
    device is held busy by a direct call. The device is released once every call is answered and the model
    replica has counted each call that ran out of time as cancelled. The outcome of each call, the model's
    `state()` after the release, and the texts sent (each with `word`: distinct from any other test's)."""
    tei, stubs = generated["tei_pb2"], generated["tei_pb2_grpc"]
    model = serve.get_deployment_handle(MODEL_DEPLOYMENT, "grpc-held")
    texts = [f"{word} held behind the device {n}" for n in ("one", "two", "three", "four", "five", "six")[:requests]]

    async def burst():
        async with grpc.aio.insecure_channel(grpc_target) as chan:
            embed = stubs.EmbedStub(chan)
            metadata = (("application", "grpc-held"), ("authorization", f"Bearer {KEY}"))
            calls = [embed.Embed(tei.EmbedRequest(inputs=t), metadata=metadata, timeout=deadline_s) for t in texts]
            return await asyncio.gather(*calls, return_exceptions=True)

    def cancelled() -> int:
        return model.state.remote().result()["counts"].get("cancelled_requests", 0)

    before = cancelled()
    try:
        model.hold.remote().result()
        blocker = model.encode.remote(EncodeRequest(texts=[f"{word} holds the device busy"]))
        assert wait_until(lambda: model.state.remote().result()["in_forward"] == 1, 60)
        outcomes = asyncio.run(burst())
        expired = sum(isinstance(o, grpc.RpcError) and o.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                      for o in outcomes)
        assert wait_until(lambda: cancelled() - before >= expired, 30), (cancelled() - before, expired)
    finally:
        model.release.remote().result()
    blocker.result(timeout_s=60)
    return outcomes, model.state.remote().result(), texts


def test_grpc_deadline_cancels_work_not_yet_started(generated, grpc_target, apps, hf_tokenizer):
    """Calls whose client deadline passes while the device is held end DEADLINE_EXCEEDED, are cancelled on the
    model replica (`_held` waits for that), and none of their texts is computed once the device is free.
    (A cancel of a call already admitted by its replica used to be lost: the caller's leaving also cancels
    the answer's future, which then looked answered.)"""
    outcomes, after, texts = _held(generated, grpc_target, requests=3, word="deadline")
    assert [o.code() for o in outcomes] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3, outcomes
    sent = [hf_tokenizer(t)["input_ids"] for t in texts]
    assert not [ids for ids in sent if ids in after["computed"]], "a text whose caller had left was computed"


def test_overload_is_resource_exhausted_with_retry_after(generated, grpc_target, apps):
    outcomes, _, _ = _held(generated, grpc_target, requests=6, word="overload")
    codes = [o.code() if isinstance(o, grpc.RpcError) else grpc.StatusCode.OK for o in outcomes]
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError) and o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert refused, codes  # 3 pending at most: the rest is refused at once
    assert all(dict(o.trailing_metadata()).get("retry-after") == "1" for o in refused)
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
