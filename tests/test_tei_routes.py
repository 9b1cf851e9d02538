"""TEI-compatible routes on the real service: bodies and answers as text-embeddings-inference, and
Hugging Face's `InferenceClient` (a TEI client) working unchanged."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from ray import serve

from serve_app.app import build_service
from serve_app.core.config import EncoderConfig
from tests.support.reference import tei_tokens

MAX_LENGTH = 32
# The two token budgets, deliberately different: /info must report each under its own name, and TEI's
# max_batch_tokens must be the one that bounds a request (the queue's).
FORWARD_TOKENS = 64
QUEUE_TOKENS = 200


@pytest.fixture(scope="module")
def tei_config(encoder_config) -> EncoderConfig:
    """The shared settings with this module's own max_length and forward-pass budget. (The texts the tests
    compare with the shared `direct` encoder are far shorter than MAX_LENGTH: no cut either side.)"""
    return encoder_config.model_copy(update={"max_length": MAX_LENGTH, "max_forward_tokens": FORWARD_TOKENS})


@pytest.fixture(scope="module")
def url(serve_instance, tei_config) -> str:
    serve.run(build_service({"encoder": tei_config.model_dump(), "limits": {"max_texts_per_request": 8}},
                            {"user_config": {"max_queue_tokens": QUEUE_TOKENS}}),
              name="bge-m3", route_prefix="/")
    return serve_instance


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def test_embed(client, direct):
    texts = ["text embeddings inference", "東京"]
    for path in ("/embed", "/"):
        body = client.post(path, json={"inputs": texts}).json()
        np.testing.assert_allclose(np.array(body), np.stack([e.dense for e in direct.encode(texts)]), atol=1e-5)
    single = client.post("/embed", json={"inputs": "one", "normalize": True, "truncate": False}).json()
    np.testing.assert_allclose(single[0], direct.encode(["one"])[0].dense, atol=1e-5)
    # TEI's default is truncate=false: an over-long input is refused, naming it; truncate=true cuts it.
    long_text = "word " * 100
    refused = client.post("/embed", json={"inputs": ["ok", long_text]})
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "inputs[1]"
    assert client.post("/embed", json={"inputs": long_text, "truncate": True}).status_code == 200
    for field, value in (("normalize", False), ("prompt_name", "document"), ("truncation_direction", "Left"),
                         ("dimensions", 3)):
        response = client.post("/embed", json={"inputs": "x", field: value})
        assert response.status_code == 422 and response.json()["error"]["param"] == field, response.text


def test_embed_sparse_and_all(client, direct):
    texts = ["sparse lexical weights", "ColBERT vectors 東京"]
    expected = direct.encode(texts, colbert=True)
    sparse = client.post("/embed_sparse", json={"inputs": texts}).json()
    for got, exp in zip(sparse, expected, strict=True):
        assert [p["index"] for p in got] == exp.sparse_indices.tolist()
        np.testing.assert_allclose([p["value"] for p in got], exp.sparse_values, atol=1e-5)
    every = client.post("/embed_all", json={"inputs": texts}).json()
    for got, exp in zip(every, expected, strict=True):
        np.testing.assert_allclose(np.array(got), exp.colbert, atol=1e-5)


def test_tokenize_and_decode(client, hf_tokenizer):
    """/tokenize answers what the checkpoint's own tokenizer (transformers) gives: ids, token strings, special
    flags and character offsets, in TEI's shape; /decode gives its decoded text, and the text sent."""
    texts = ["hello 東京", "東京 library museum"]  # within the small checkpoint's vocabulary
    tokens = client.post("/tokenize", json={"inputs": texts})
    assert tokens.status_code == 200, tokens.text
    assert tokens.json() == [tei_tokens(hf_tokenizer, text) for text in texts]
    plain = client.post("/tokenize", json={"inputs": texts[0], "add_special_tokens": False})
    assert plain.json() == [tei_tokens(hf_tokenizer, texts[0], add_special_tokens=False)]
    ids = [t["id"] for t in tokens.json()[0]]
    assert client.post("/decode", json={"ids": ids}).json() == [texts[0]]
    assert client.post("/decode", json={"ids": ids}).json() == [hf_tokenizer.decode(ids, skip_special_tokens=True)]
    assert client.post("/decode", json={"ids": [ids, ids[1:-1]], "skip_special_tokens": False}).json() == [
        hf_tokenizer.decode(ids, skip_special_tokens=False), hf_tokenizer.decode(ids[1:-1], skip_special_tokens=False)]
    bad = client.post("/decode", json={"ids": [ids[0], 10**9]})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "ids[1]"
    invalid = client.post("/tokenize", content=b'{"inputs": ["fine", "\\udc00"]}')
    assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "inputs[1]"


def test_tokenize_marks_an_unknown_token_as_part_of_the_text_with_its_span(client, hf_tokenizer):
    """A character the vocabulary lacks is encoded as `<unk>`: a token of the text, not one the tokenizer
    added (its special-tokens mask, which TEI's `special` is), so it keeps its character span."""
    text = "Rivers, mountains & 図書館!"  # ",", "&" and "!" are not in the small checkpoint's vocabulary
    expected = tei_tokens(hf_tokenizer, text)
    unknown = [t for t in expected if t["id"] == hf_tokenizer.unk_token_id]
    assert len(unknown) == 3 and not any(t["special"] for t in unknown)  # what this test is about
    response = client.post("/tokenize", json={"inputs": text})
    assert response.status_code == 200, response.text
    assert response.json() == [expected]


def test_info_has_tei_fields(client, direct):
    info = client.get("/info").json()
    assert info["model_id"] == direct.config.model and info["max_input_length"] == MAX_LENGTH
    assert info["model_type"] == {"embedding": {"pooling": "cls"}} and info["max_client_batch_size"] == 8
    assert info["max_batch_tokens"] == QUEUE_TOKENS and info["model_dtype"] == "fp32"


def test_info_reports_both_token_budgets_and_tei_max_batch_tokens_is_what_a_request_may_hold(client):
    info = client.get("/info").json()
    assert info["max_forward_tokens"] == FORWARD_TOKENS
    assert info["batching"]["max_queue_tokens"] == QUEUE_TOKENS == info["max_batch_tokens"]
    fits = info["max_batch_tokens"] // MAX_LENGTH
    # Distinct texts (none answered by the cache), each cut to MAX_LENGTH tokens.
    long_texts = [f"budget {i} " + "word " * 100 for i in range(2 * fits + 1)]
    accepted = client.post("/embed", json={"inputs": long_texts[:fits], "truncate": True})
    assert accepted.status_code == 200, accepted.text
    refused = client.post("/embed", json={"inputs": long_texts[fits:], "truncate": True})
    assert refused.status_code == 413 and str(QUEUE_TOKENS) in refused.json()["error"]["message"], refused.text


def test_huggingface_inference_client(url, direct):
    vector = InferenceClient(model=url).feature_extraction("hello from huggingface_hub")
    np.testing.assert_allclose(vector[0], direct.encode(["hello from huggingface_hub"])[0].dense, atol=1e-5)
