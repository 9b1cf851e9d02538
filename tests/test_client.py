"""`serve_app.client`: retry plumbing against scripted answers, then every call against the real service."""

from __future__ import annotations

import email.utils
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from ray import serve

from serve_app import client as client_module
from serve_app.app import build_app
from serve_app.client import Client, ServiceError, retry_delay
from serve_app.serving.schemas import EncodeRequest
from tests.support.reference import tei_tokens


def scripted(answers: list[httpx.Response], seen: list) -> httpx.MockTransport:
    """A transport that answers with `answers` in turn (plumbing only: no service involved)."""
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]
    return httpx.MockTransport(handler)


def error(status: int, retry_after: str | None = None, param: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {"message": "m", "type": "t", "param": param,
                                                                   "code": "c"}})


def test_retries_503_and_429_honouring_retry_after(monkeypatch):
    waits, seen = [], []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    ok = httpx.Response(200, json={"status": "ok", "model": None})
    with Client("http://test", transport=scripted([error(503, "2"), error(429, "1"), ok], seen)) as c:
        assert c.info() == {"status": "ok", "model": None}
    assert len(seen) == 3 and c.retries == 2
    assert 2 <= waits[0] <= 2.5 and 1 <= waits[1] <= 1.25  # at least Retry-After, with bounded jitter


def test_gives_up_and_does_not_retry_client_errors(monkeypatch):
    monkeypatch.setattr(client_module.time, "sleep", lambda s: None)
    seen = []
    with (Client("http://test", max_retries=2, transport=scripted([error(503, "0")] * 3, seen)) as c,
          pytest.raises(ServiceError) as caught):
        c.info()
    assert caught.value.status == 503 and len(seen) == 3
    seen = []
    with (Client("http://test", transport=scripted([error(422, param="texts[0]")], seen)) as c,
          pytest.raises(ServiceError) as caught):
        c.encode(["x"])
    assert (caught.value.status, caught.value.param, len(seen)) == (422, "texts[0]", 1)


def test_retry_after_as_http_date_and_backoff():
    future = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.5 <= retry_delay(httpx.Response(503, headers={"Retry-After": future}), 0, 30) <= 3.75
    assert retry_delay(httpx.Response(503, headers={"Retry-After": "junk"}), 2, 30) <= 1.25  # backoff 1 s
    assert retry_delay(None, 10, 5) <= 6.25  # capped


# ---- the real service --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url(serve_instance, encoder_config) -> str:
    serve.run(build_app({"encoder": encoder_config.model_dump(), "cache": {"backend": "off"},
                         "limits": {"max_pending_requests": 2}}), name="bge-m3", route_prefix="/")
    return serve_instance


def test_every_call_matches_the_encoder(url, direct, hf_tokenizer, mixed_texts):
    with Client(url) as c:
        np.testing.assert_allclose(c.embed(mixed_texts), np.stack([e.dense for e in direct.encode(mixed_texts)]),
                                   atol=1e-5)
        for got, exp in zip(c.encode(mixed_texts, colbert=True), direct.encode(mixed_texts, colbert=True), strict=True):
            np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
            np.testing.assert_array_equal(got.sparse_indices, exp.sparse_indices)
            np.testing.assert_allclose(got.colbert, exp.colbert, atol=1e-5)
            assert (got.n_tokens, got.truncated) == (exp.n_tokens, exp.truncated)
        tokens = c.encode(["東京 library"], dense=False, sparse_tokens=True)[0]
        assert tokens.sparse_tokens == direct.encode(["東京 library"], sparse_tokens=True)[0].sparse_tokens
        scores = c.score("capital of japan", ["東京 is the capital", "rivers"])
        assert len(scores) == 2 and {"dense", "sparse", "colbert", "colbert+sparse+dense"} <= set(scores[0])
        # tokenize and decode: as the checkpoint's own tokenizer (transformers)
        tokens = c.tokenize(["hello 東京"])
        assert tokens == [tei_tokens(hf_tokenizer, "hello 東京")]
        ids = [t["id"] for t in tokens[0]]
        assert c.decode([ids]) == [hf_tokenizer.decode(ids, skip_special_tokens=True)] == ["hello 東京"]
        assert c.health()["status"] == "ok" and c.info()["dim"] == direct.dim
        with pytest.raises(ServiceError) as caught:
            c.encode(["x" * 1000], truncate=False)
        assert caught.value.status == 413 and caught.value.param == "texts[0]"


def test_the_same_request_gives_the_same_outputs_through_the_handle_http_and_the_client(url, mixed_texts):
    """One default for each output, whatever the path: a request that names no output gets dense and sparse (no
    ColBERT) through the Python handle, `/encode` and `Client.encode`, with equal values."""
    texts = mixed_texts[:3]
    handle = serve.get_deployment_handle("EmbeddingModel", "bge-m3")
    by_handle = handle.encode.remote(EncodeRequest(texts=texts)).result().embeddings
    response = httpx.post(f"{url}/encode", json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    by_http = response.json()["data"]
    with Client(url) as c:
        by_client = c.encode(texts)
    for handle_out, http_out, client_out in zip(by_handle, by_http, by_client, strict=True):
        assert set(http_out) & {"dense", "sparse", "colbert"} == {"dense", "sparse"}
        for out in (handle_out, client_out):
            assert out.dense is not None and out.sparse_indices is not None and out.colbert is None
            np.testing.assert_allclose(out.dense, http_out["dense"], rtol=0, atol=1e-6)
            np.testing.assert_array_equal(out.sparse_indices, http_out["sparse"]["indices"])
            np.testing.assert_allclose(out.sparse_values, http_out["sparse"]["values"], rtol=0, atol=1e-6)


def test_overloaded_service_is_retried_until_served(url, direct):
    """max_pending_requests=2 turns most of 12 concurrent callers away with 429 + Retry-After; the client's
    retries get every one of them served, with the right vectors."""
    texts = [[f"caller {i} text {j} " * 8 for j in range(8)] for i in range(12)]
    with Client(url, max_retries=10) as c, ThreadPoolExecutor(12) as pool:
        results = list(pool.map(c.embed, texts))
        assert c.retries > 0
    for got, group in zip(results, texts, strict=True):
        np.testing.assert_allclose(got, np.stack([e.dense for e in direct.encode(group)]), atol=1e-5)
