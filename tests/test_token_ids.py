"""Token-id input on every encode route: the ids `/tokenize` returns for a text, sent back, give that text's
dense, sparse and ColBERT outputs; hostile ids are a 4xx naming the item and the bound, before any work,
and the replica stays healthy; ids are cached apart from texts and counted in `usage`."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np
import openai
import pytest
from ray import serve

from serve_app.app import build_app
from serve_app.client import Client
from serve_app.core.cache.codec import cache_key
from serve_app.core.config import Instructions

TEXTS = ["how do plants make food", "東京タワーの高さは333メートルです", "a third, longer text " * 6]
MAX_LENGTH = 48
LIMITS = {"max_texts_per_request": 8}
ATOL = 1e-6  # fp32: the same ids through the same model, batched with other inputs or not


@pytest.fixture(scope="module")
def base_url(serve_instance, encoder_config) -> str:
    # A query instruction is configured, so the test can show it is not applied to ids.
    encoder = encoder_config.model_copy(update={"max_length": MAX_LENGTH,
                                                "instructions": Instructions(query="Represent this query: ")})
    serve.run(build_app({"encoder": encoder.model_dump(), "cache": {"backend": "memory"}, "limits": LIMITS,
                         "openai_token_ids": True}), name="ids", route_prefix="/ids")
    yield f"{serve_instance}/ids"
    serve.delete("ids")


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def text_ids(client) -> list[list[int]]:
    response = client.post("/tokenize", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    return [[token["id"] for token in tokens] for tokens in response.json()]


@pytest.fixture(scope="module")
def vocab_size(client) -> int:
    return client.get("/info").json()["vocab_size"]


def _encode(client, body: dict) -> dict:
    response = client.post("/encode", json={"dense": True, "sparse": True, "colbert": True, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_ids_tokenize_returns_give_the_texts_dense_sparse_and_colbert_outputs(client, text_ids):
    by_text, by_ids = _encode(client, {"texts": TEXTS}), _encode(client, {"token_ids": text_ids})
    for text, ids in zip(by_text["data"], by_ids["data"], strict=True):
        np.testing.assert_allclose(ids["dense"], text["dense"], rtol=0, atol=ATOL)
        assert ids["sparse"]["indices"] == text["sparse"]["indices"]  # keyed by the same token ids
        np.testing.assert_allclose(ids["sparse"]["values"], text["sparse"]["values"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(ids["colbert"], text["colbert"], rtol=0, atol=ATOL)
    # the tokens encoded: the third text is cut to max_length, its ids alike
    encoded = sum(min(len(ids), MAX_LENGTH) for ids in text_ids)
    assert by_ids["usage"]["prompt_tokens"] == encoded == by_text["usage"]["prompt_tokens"]


def test_the_tei_routes_take_ids_and_answer_as_for_the_text(client, text_ids):
    for route in ("/embed", "/embed_sparse", "/embed_all"):
        # truncate: TEI's default refuses the third, over-long input
        by_text = client.post(route, json={"inputs": TEXTS, "truncate": True})
        by_ids = client.post(route, json={"inputs": text_ids, "truncate": True})
        assert by_text.status_code == by_ids.status_code == 200, (route, by_ids.text)
        if route == "/embed_sparse":
            for text, ids in zip(by_text.json(), by_ids.json(), strict=True):
                assert [p["index"] for p in ids] == [p["index"] for p in text]
                np.testing.assert_allclose([p["value"] for p in ids], [p["value"] for p in text], rtol=0, atol=ATOL)
        else:
            for text, ids in zip(by_text.json(), by_ids.json(), strict=True):
                np.testing.assert_allclose(ids, text, rtol=0, atol=ATOL)
    single = client.post("/embed", json={"inputs": text_ids[0]})  # one list of ids: one input
    assert single.status_code == 200 and len(single.json()) == 1
    np.testing.assert_allclose(single.json()[0], client.post("/embed", json={"inputs": TEXTS[0]}).json()[0], atol=ATOL)


def test_with_openai_token_ids_on_the_openai_client_sends_ids_from_tokenize_and_gets_the_texts_vector(base_url,
                                                                                                      text_ids):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    by_text = client.embeddings.create(input=TEXTS, model="bge-m3")
    by_ids = client.embeddings.create(input=text_ids, model="bge-m3")
    one = client.embeddings.create(input=text_ids[1], model="bge-m3")  # a flat list of ids: one input
    assert len(one.data) == 1
    for text, ids in zip(by_text.data, by_ids.data, strict=True):
        np.testing.assert_allclose(ids.embedding, text.embedding, rtol=0, atol=ATOL)
    np.testing.assert_allclose(one.data[0].embedding, by_text.data[1].embedding, rtol=0, atol=ATOL)
    assert by_ids.usage.prompt_tokens == sum(min(len(ids), MAX_LENGTH) for ids in text_ids)


def test_the_python_client_sends_token_ids_and_gets_the_texts_outputs(base_url, text_ids):
    with Client(base_url) as ours:
        by_text, by_ids = ours.encode(TEXTS, colbert=True), ours.encode(text_ids, colbert=True)
        dense_ids = ours.embed(text_ids)
    for text, ids, dense in zip(by_text, by_ids, dense_ids, strict=True):
        np.testing.assert_allclose(ids.dense, text.dense, rtol=0, atol=ATOL)
        np.testing.assert_allclose(dense, text.dense, rtol=0, atol=ATOL)
        np.testing.assert_array_equal(ids.sparse_indices, text.sparse_indices)
        np.testing.assert_allclose(ids.colbert, text.colbert, rtol=0, atol=ATOL)


def test_no_instruction_is_put_before_token_ids(client, text_ids):
    plain = _encode(client, {"token_ids": text_ids[:1]})["data"][0]["dense"]
    as_query = _encode(client, {"token_ids": text_ids[:1], "input_type": "query"})["data"][0]["dense"]
    instructed_text = _encode(client, {"texts": TEXTS[:1], "input_type": "query"})["data"][0]["dense"]
    np.testing.assert_allclose(as_query, plain, rtol=0, atol=ATOL)
    assert not np.allclose(instructed_text, plain, atol=1e-3)  # the instruction does change a text's vector


def test_over_long_ids_follow_the_overflow_rules_of_texts(client, text_ids):
    long_text = "words that repeat " * 40
    [long_ids] = [[t["id"] for t in tokens] for tokens in client.post("/tokenize", json={"inputs": long_text}).json()]
    assert len(long_ids) > MAX_LENGTH
    for rule in ({"truncate": True}, {"overflow": "chunk"}):
        text, ids = _encode(client, {"texts": [long_text], **rule}), _encode(client, {"token_ids": [long_ids], **rule})
        np.testing.assert_allclose(ids["data"][0]["dense"], text["data"][0]["dense"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(ids["data"][0]["colbert"], text["data"][0]["colbert"], rtol=0, atol=ATOL)
    refused = client.post("/encode", json={"token_ids": [text_ids[0], long_ids], "truncate": False})
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["param"] == "token_ids[1]" and f"max_length={MAX_LENGTH}" in refused.text


@dataclass(frozen=True)
class PastVocab:
    """The token id `offset` past the vocabulary's last: its size (from `/info`, known once the service
    runs) plus `offset`."""

    offset: int = 0


def _resolve(value, vocab_size: int):
    """`value` with each `PastVocab` replaced by its id."""
    if isinstance(value, PastVocab):
        return vocab_size + value.offset
    if isinstance(value, list):
        return [_resolve(item, vocab_size) for item in value]
    if isinstance(value, dict):
        return {key: _resolve(item, vocab_size) for key, item in value.items()}
    return value


# route, body, status, the param named, what the message must say ("{vocab}": the vocabulary size)
HOSTILE_IDS = [
    pytest.param("/encode", {"token_ids": [[0, 5, PastVocab(), 2]]}, 422, "token_ids[0][2]", "[0, {vocab})",
                 id="encode-id-equal-to-the-vocabulary-size"),
    pytest.param("/v1/embeddings", {"input": [[0, 5, 2], [0, PastVocab(7), 2]]}, 422, "input[1][1]", "{vocab}",
                 id="openai-id-past-the-vocabulary"),
    pytest.param("/embed", {"inputs": [[0, 10**12, 2]]}, 422, "inputs[0][1]", "{vocab}", id="tei-id-of-10**12"),
    pytest.param("/v1/embeddings", {"input": [[0, -3, 2]]}, 422, "input[0][1]", "greater than or equal to 0",
                 id="openai-negative-id"),
    pytest.param("/encode", {"token_ids": [[0, 1.5, 2]]}, 422, "token_ids[0][1]", "valid integer",
                 id="encode-float-id"),
    pytest.param("/v1/embeddings", {"input": [0, True, 2]}, 422, "input[1]", "valid integer", id="openai-bool-id"),
    pytest.param("/v1/embeddings", {"input": [[0, 5, 2], []]}, 422, "input[1]", "at least 1 item",
                 id="openai-empty-id-list"),
    pytest.param("/encode", {"token_ids": []}, 422, "token_ids", "at least 1 item", id="encode-no-id-lists"),
    pytest.param("/v1/embeddings", {"input": ["a text", [0, 5, 2]]}, 422, "input", "not mixed",
                 id="openai-text-then-ids"),
    pytest.param("/embed", {"inputs": [[0, 5, 2], "a text"]}, 422, "inputs", "not mixed", id="tei-ids-then-text"),
    pytest.param("/encode", {"texts": ["a"], "token_ids": [[0, 5, 2]]}, 422, "texts", "either texts or token_ids",
                 id="encode-texts-and-token-ids"),
    pytest.param("/v1/embeddings", {"input": [[0, 5, 2]] * 9}, 413, "input", "limit of 8",
                 id="openai-one-id-list-over-the-count-limit"),
]


@pytest.mark.parametrize(("route", "body", "status", "param", "bound"), HOSTILE_IDS)
def test_hostile_ids_get_a_4xx_naming_the_item_and_the_bound_and_the_replica_stays_healthy(
        client, vocab_size, route, body, status, param, bound):
    response = client.post(route, json=_resolve(body, vocab_size))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and bound.format(vocab=vocab_size) in error["message"], error
    assert client.post("/embed", json={"inputs": [[0, 5, 2]]}).status_code == 200
    assert client.get("/health").status_code == 200


def test_ids_are_cached_apart_from_texts_and_a_repeat_is_a_hit(client, text_ids):
    key = {"namespace": "r|fp32|8|True", "outputs": "dense"}
    ids = [0, 97, 98, 2]
    assert cache_key(**key, text=ids) != cache_key(**key, text=str(ids))
    assert cache_key(**key, text=ids) != cache_key(**key, text="".join(map(chr, ids)))
    before = client.get("/info").json()["cache"]["hits"]
    first = client.post("/embed", json={"inputs": [[0, 123, 456, 2]]})
    again = client.post("/embed", json={"inputs": [[0, 123, 456, 2]]})
    assert first.status_code == again.status_code == 200
    assert client.get("/info").json()["cache"]["hits"] == before + 1
    np.testing.assert_array_equal(first.json(), again.json())


def test_the_openapi_schema_shows_the_four_input_shapes(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    shapes = schema["OpenAIEmbeddingRequest"]["properties"]["input"]["oneOf"]
    assert [s.get("type") for s in shapes] == ["string", "array", "array", "array"]
    assert shapes[2]["items"] == {"type": "integer", "minimum": 0}
    assert shapes[3]["items"]["items"] == {"type": "integer", "minimum": 0}
    assert "token_ids" in schema["EncodeBody"]["properties"]
