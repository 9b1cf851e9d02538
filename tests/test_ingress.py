"""The HTTP service end to end: real Ray Serve, real HTTP on 127.0.0.1, the small checkpoint."""

from __future__ import annotations

import asyncio
import base64
import json
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import pytest
import tomllib
from ray import serve

from serve_app.app import build_app
from serve_app.http.serialization import quantize_dense
from serve_app.serving.config import BatchingConfig
from tests.conftest import TINY_MAX_LENGTH

MAX_LENGTH = TINY_MAX_LENGTH  # the shared `encoder_config`'s
LIMITS = {"max_texts_per_request": 8, "max_body_bytes": 20_000}


@pytest.fixture(scope="module")
def url(serve_instance, encoder_config) -> str:
    serve.run(build_app({"encoder": encoder_config.model_dump(), "limits": LIMITS}), name="bge-m3", route_prefix="/")
    return serve_instance


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_langchains_tiktoken_ids_on_v1_embeddings_are_a_422_naming_its_switch_and_the_setting(url):
    """LangChain's OpenAIEmbeddings tokenizes with tiktoken (cl100k_base for a model it does not know) and sends
    those ids as `input` through the openai client, unless created with check_embedding_ctx_length=False.
    Embedded as BGE-M3's own ids they would give wrong vectors with a 200: by default they are refused."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    tiktoken_ids = [[15339, 1917], [791, 9282, 374, 6555, 3432]]  # cl100k_base: "hello world", "The weather is ..."
    for sent in (tiktoken_ids, tiktoken_ids[0], [[1, 2]]):  # id lists, one flat list, ids within our vocabulary
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.embeddings.create(input=sent, model="bge-m3")
        error = refused.value.body  # the openai client keeps the `error` object of the JSON body
        assert error["param"] == "input" and error["code"] == "token_ids_off", error
        assert "check_embedding_ctx_length=False" in error["message"] and "openai_token_ids" in error["message"]
    assert len(client.embeddings.create(input=["hello world"], model="bge-m3").data) == 1  # texts: as always


def test_health_models_info(client, direct):
    health = client.get("/health").json()
    assert health["status"] == "ok", health
    assert health["model"]["status"] == "HEALTHY" and health["model"]["replicas"] == {"RUNNING": 1}
    assert client.get("/v1/models").json()["data"][0]["id"] == "bge-m3"
    info = client.get("/info").json()
    assert info["dim"] == direct.dim and info["max_length"] == MAX_LENGTH and info["dtype"] == "fp32"
    assert info["device"] == "cpu" and info["batching"] == BatchingConfig().model_dump() and info["version"]


def test_info_and_openapi_report_the_version_written_in_pyproject(client):
    """pyproject.toml is the one place the version is written; the service reports it from there."""
    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert version(declared["name"]) == declared["version"]  # the installed metadata is this tree's
    assert client.get("/info").json()["version"] == declared["version"]
    assert client.get("/openapi.json").json()["info"]["version"] == declared["version"]


def test_encode_matches_direct_encoder(client, direct, mixed_texts):
    texts = mixed_texts[:8]
    response = client.post("/encode", json={"texts": texts, "colbert": True})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = direct.encode(texts, colbert=True)
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    for item, exp in zip(body["data"], expected, strict=True):
        np.testing.assert_allclose(item["dense"], exp.dense, atol=1e-5)
        assert item["sparse"]["indices"] == exp.sparse_indices.tolist()
        np.testing.assert_allclose(item["sparse"]["values"], exp.sparse_values, atol=1e-5)
        np.testing.assert_allclose(np.array(item["colbert"]).reshape(exp.colbert.shape), exp.colbert, atol=1e-5)
        assert (item["n_tokens"], item["truncated"]) == (exp.n_tokens, exp.truncated)
    assert body["usage"]["prompt_tokens"] == sum(e.n_tokens for e in expected)
    assert any(e.truncated for e in expected)
    for header in ("x-queue-time", "x-inference-time", "x-tokenization-time", "x-compute-tokens"):
        assert float(response.headers[header]) >= 0
    assert int(response.headers["x-compute-tokens"]) == body["usage"]["prompt_tokens"]


def test_encode_returns_only_what_was_asked(client, direct):
    body = client.post("/encode", json={"texts": ["東京 library"], "dense": False, "sparse": True,
                                        "sparse_tokens": True}).json()
    item = body["data"][0]
    assert "dense" not in item and "colbert" not in item and "indices" not in item["sparse"]
    exp = direct.encode(["東京 library"], sparse_tokens=True)[0]
    assert item["sparse"]["tokens"] == exp.sparse_tokens


def test_openai_route_float_and_base64(client, direct):
    texts = ["what is BGE-M3", "東京"]
    expected = direct.encode(texts, sparse=False)
    body = client.post("/v1/embeddings", json={"input": texts, "model": "bge-m3", "user": "u1"}).json()
    assert body["object"] == "list" and body["model"] == "bge-m3"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == sum(e.n_tokens for e in expected)
    for item, exp in zip(body["data"], expected, strict=True):
        assert item["object"] == "embedding"
        np.testing.assert_allclose(item["embedding"], exp.dense, atol=1e-5)
    single = client.post("/v1/embeddings", json={"input": texts[1], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(single["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[1].dense, atol=1e-5)
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": direct.dim}).status_code == 200


def test_official_openai_client(url, direct):
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    texts = ["hello from the openai client", "日本語のテキスト"]
    expected = direct.encode(texts, sparse=False)
    for fmt in (openai.NOT_GIVEN, "float"):  # the client asks for base64 by default
        result = client.embeddings.create(model="bge-m3", input=texts, encoding_format=fmt)
        assert [d.index for d in result.data] == [0, 1] and result.usage.prompt_tokens > 0
        for d, exp in zip(result.data, expected, strict=True):
            np.testing.assert_allclose(d.embedding, exp.dense, atol=1e-5)
    assert [m.id for m in client.models.list()] == ["bge-m3"]
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="bge-m3", input="x", dimensions=direct.dim + 1)


def test_score_matches_scoring_helpers(client, direct):
    from serve_app.core.scoring import ScoreWeights, compute_scores

    query, passages = "capital of japan", ["東京 is the capital", "rivers and mountains"]
    weights = {"dense": 0.5, "sparse": 0.2, "colbert": 0.3}
    body = client.post("/score", json={"query": query, "passages": passages, "weights": weights}).json()
    q, *ps = direct.encode([query, *passages], colbert=True)
    for item, p in zip(body["data"], ps, strict=True):
        exp = compute_scores(q, p, ScoreWeights(**weights))
        for key, value in exp.items():
            assert item[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("payload,param", [
    ({"texts": []}, "texts"),
    ({"texts": ["ok", 3]}, "texts[1]"),
    ({"texts": "not a list"}, "texts"),
    ({"texts": ["ok"], "dense": "yes"}, "dense"),
    ({"texts": ["ok"], "dense": False, "sparse": False}, "body"),
    ({"texts": ["ok"], "unknown": 1}, "unknown"),
    ({}, "texts"),
])
def test_encode_bad_fields_are_422_naming_the_field(client, payload, param):
    assert_error(client.post("/encode", json=payload), 422, param)


def test_openai_bad_inputs(client):
    assert_error(client.post("/v1/embeddings", json={"input": ["a", None]}), 422, "input[1]")
    assert_error(client.post("/v1/embeddings", json={"input": []}), 422, "input")
    assert_error(client.post("/v1/embeddings", json={"input": "a", "encoding_format": "int8"}), 422,
                 "encoding_format")
    assert_error(client.post("/v1/embeddings", json={"input": "a", "dimensions": 1024 + 1}), 422, "dimensions")


def test_invalid_json_route_and_method(client):
    assert_error(client.post("/encode", content=b'{"texts": ["a"'), 400, "body")
    as_text = client.post("/encode", content=b'{"texts": ["a"]}', headers={"content-type": "text/plain"})
    assert as_text.status_code == 200  # bodies are read as JSON whatever the Content-Type
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/encode"), 405)
    assert_error(client.put("/v1/embeddings", json={"input": "a"}), 405)


def test_limits_are_413(client):
    error = assert_error(client.post("/encode", json={"texts": ["a"] * 9}), 413, "texts")
    assert "8" in error["message"] and "9" in error["message"]
    assert_error(client.post("/v1/embeddings", json={"input": ["a"] * 9}), 413, "input")
    assert_error(client.post("/encode", json={"texts": ["x" * 30_000]}), 413, "body")
    long_text = " ".join(["library museum"] * 40)
    error = assert_error(client.post("/encode", json={"texts": ["short", long_text], "truncate": False}), 413,
                         "texts[1]")
    assert "max_length=64" in error["message"] and "tokens" in error["message"]
    assert long_text not in error["message"]
    ok = client.post("/encode", json={"texts": ["short", long_text]}).json()
    assert [d["truncated"] for d in ok["data"]] == [False, True]


def test_chunked_body_is_held_to_the_size_limit(client, direct):
    """Without a Content-Length there is nothing to refuse up front: the bytes are counted as they
    arrive, and past `max_body_bytes` the answer is the same JSON 413 (not a body-parsing 400)."""
    def chunked(payload: dict):
        body = json.dumps(payload).encode()
        return (body[i: i + 4096] for i in range(0, len(body), 4096))

    small = client.post("/encode", content=chunked({"texts": ["chunked upload"]}))
    assert small.request.headers["transfer-encoding"] == "chunked" and "content-length" not in small.request.headers
    assert small.status_code == 200, small.text
    np.testing.assert_allclose(small.json()["data"][0]["dense"], direct.encode(["chunked upload"])[0].dense,
                               atol=1e-5)
    for path, payload in [("/encode", {"texts": ["x" * 30_000]}), ("/v1/embeddings", {"input": "x" * 30_000}),
                          ("/embed", {"inputs": "x" * 30_000})]:
        over = client.post(path, content=chunked(payload))
        assert over.request.headers["transfer-encoding"] == "chunked"
        error = assert_error(over, 413, "body")
        assert error["code"] == "body_too_large" and "20000" in error["message"], (path, error)


def test_concurrent_requests_are_coalesced_and_kept_apart(url, direct):
    texts = [f"request {i} about {'東京' if i % 2 else 'rivers'} " + "word " * (i % 7) for i in range(48)]
    expected = {t: e for t, e in zip(texts, direct.encode(texts), strict=True)}

    async def fire():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            async def one(i):
                mine = texts[i: i + 1 + i % 3]  # callers send 1-3 texts each
                r = await c.post("/encode", json={"texts": mine, "sparse": i % 2 == 0})
                return mine, r
            return await asyncio.gather(*(one(i) for i in range(len(texts))))

    batch_sizes = []
    for mine, response in asyncio.run(fire()):
        assert response.status_code == 200, response.text
        batch_sizes.append(int(response.headers["x-batch-requests"]))
        data = response.json()["data"]
        assert len(data) == len(mine)
        for item, text in zip(data, mine, strict=True):
            np.testing.assert_allclose(item["dense"], expected[text].dense, atol=1e-5)
            assert ("sparse" in item) == (texts.index(mine[0]) % 2 == 0)
    assert max(batch_sizes) > 1, batch_sizes


def test_output_encodings(client, direct):
    texts = ["encodings for size", "東京の図書館"]
    expected = direct.encode(texts, colbert=True)
    body = client.post("/encode", json={"texts": texts, "colbert": True, "encoding_format": "base64"}).json()
    for item, exp in zip(body["data"], expected, strict=True):
        np.testing.assert_allclose(np.frombuffer(base64.b64decode(item["dense"]), "<f4"), exp.dense, atol=1e-5)
        colbert = np.frombuffer(base64.b64decode(item["colbert"]), "<f4").reshape(item["colbert_shape"])
        np.testing.assert_allclose(colbert, exp.colbert, atol=1e-5)
    half = client.post("/encode", json={"texts": texts, "colbert": True, "colbert_dtype": "float16",
                                        "encoding_format": "base64"}).json()["data"][0]
    colbert = np.frombuffer(base64.b64decode(half["colbert"]), "<f2").reshape(half["colbert_shape"])
    np.testing.assert_allclose(colbert, expected[0].colbert, atol=1e-3)
    for dtype in ("int8", "uint8", "binary", "ubinary"):
        want = [quantize_dense(e.dense, dtype) for e in expected]
        got = client.post("/encode", json={"texts": texts, "sparse": False, "dense_dtype": dtype}).json()["data"]
        assert [g["dense"] for g in got] == [w.tolist() for w in want], dtype
        packed = client.post("/v1/embeddings", json={"input": texts, "dtype": dtype, "encoding_format": "base64"})
        for item, w in zip(packed.json()["data"], want, strict=True):
            assert np.frombuffer(base64.b64decode(item["embedding"]), w.dtype).tolist() == w.tolist(), dtype


def test_overflow_chunk_instead_of_truncation(client, direct):
    long_text = " ".join(f"passage {i} about rivers 東京" for i in range(60))
    expected = direct.encode([long_text, "short"], colbert=True, overflow="chunk")
    assert expected[0].n_tokens > MAX_LENGTH and not expected[0].truncated
    body = client.post("/encode", json={"texts": [long_text, "short"], "colbert": True, "overflow": "chunk"}).json()
    for item, exp in zip(body["data"], expected, strict=True):
        assert (item["n_tokens"], item["truncated"]) == (exp.n_tokens, False)
        np.testing.assert_allclose(item["dense"], exp.dense, atol=1e-5)
        assert item["sparse"]["indices"] == exp.sparse_indices.tolist()
        np.testing.assert_allclose(np.array(item["colbert"]), exp.colbert, atol=1e-5)
    openai_body = client.post("/v1/embeddings", json={"input": long_text, "overflow": "chunk"}).json()
    np.testing.assert_allclose(openai_body["data"][0]["embedding"], expected[0].dense, atol=1e-5)
    truncated = client.post("/encode", json={"texts": [long_text]}).json()["data"][0]
    assert truncated["truncated"] and truncated["n_tokens"] == MAX_LENGTH


def test_repeated_texts_come_from_the_cache(client, direct):
    texts = ["a text worth caching", "another one 東京"]
    before = client.get("/info").json()["cache"]
    first = client.post("/encode", json={"texts": texts, "colbert": True})
    second = client.post("/encode", json={"texts": texts, "colbert": True})
    assert int(first.headers["x-batch-requests"]) >= 1 and second.headers["x-batch-requests"] == "0"  # no model
    assert first.json()["data"] == second.json()["data"]
    mixed = client.post("/encode", json={"texts": [texts[0], "not cached yet"], "colbert": True}).json()
    assert mixed["data"][0] == first.json()["data"][0] and mixed["usage"]["prompt_tokens"] == sum(
        e.n_tokens for e in direct.encode([texts[0], "not cached yet"]))
    # Different outputs are a different entry; truncate=false never gets a truncated entry.
    dense_only = client.post("/encode", json={"texts": texts, "sparse": False}).json()
    assert "sparse" not in dense_only["data"][0]
    long_text = "cached only when cut " * 40
    assert client.post("/encode", json={"texts": [long_text]}).json()["data"][0]["truncated"]
    assert client.post("/encode", json={"texts": [long_text], "truncate": False}).status_code == 413
    after = client.get("/info").json()["cache"]
    assert after["backend"] == "memory" and after["hits"] - before["hits"] == 3
    assert after["bytes"] > before["bytes"] and 0 < after["hit_ratio"] < 1


def test_score_weights_that_would_divide_by_zero_are_422(client):
    """Found by the schemathesis fuzz: dense = sparse = 0 made the sparse+dense mean a 500."""
    response = client.post("/score", json={"query": "q", "passages": ["p"],
                                           "weights": {"dense": 0, "sparse": 0, "colbert": 1}})
    assert response.status_code == 422 and response.json()["error"]["param"] == "weights", response.text
