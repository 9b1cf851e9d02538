"""Hostile and bad input: property-based tests of the encoder and the request models (hypothesis),
exact `max_length` and count boundaries over HTTP, and a schemathesis fuzz of the whole HTTP API from
its OpenAPI schema. Never a 500, never a crash, the replica stays the same one.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from ray import serve

from serve_app.app import build_app
from serve_app.core.encoder import Encoder
from serve_app.core.errors import InvalidTextError
from serve_app.http.errors import to_api_error
from serve_app.http.protocol import EncodeBody, OpenAIEmbeddingRequest, ScoreBody
from tests.conftest import TINY_MAX_LENGTH
from tests.support.faults import model_replicas

MAX_LENGTH = TINY_MAX_LENGTH  # the shared `encoder_config`'s
MAX_TEXTS = 16
# per operation and mode; docs/reliability.md has a longer run
FUZZ_EXAMPLES = int(os.environ.get("BGE_M3_FUZZ_EXAMPLES", "40"))

# Any valid unicode: control chars, RTL marks, emoji, combining marks, NUL; plus long runs of one char.
unicode_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(50, 3000)),
    st.sampled_from(["\u202eevil rtl\u202c", "\u200b\u200d\ufeff", "👩‍👩‍👧‍👦" * 30, "\x00\x01\x7f", "e\u0301" * 100]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(unicode_text, min_size=1, max_size=6))
def test_encoder_takes_any_unicode(direct, texts):
    out = direct.encode(texts, dense=True, sparse=True, colbert=True)
    assert len(out) == len(texts)
    for emb in out:
        assert 2 <= emb.n_tokens <= MAX_LENGTH
        assert np.isfinite(emb.dense).all() and abs(np.linalg.norm(emb.dense) - 1) < 1e-4
        assert emb.colbert.shape == (emb.n_tokens - 1, direct.dim) and np.isfinite(emb.colbert).all()
        assert ((emb.sparse_indices >= 0) & (emb.sparse_indices < direct.tokenizer.vocab_size + 10)).all()
        assert np.isfinite(emb.sparse_values).all() and (emb.sparse_values >= 0).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(unicode_text, min_size=0, max_size=4), at=st.integers(0, 4),
       surrogate=st.integers(0xD800, 0xDFFF))
def test_unpaired_surrogates_are_named_by_index(direct, texts, at, surrogate):
    at = min(at, len(texts))
    texts = texts[:at] + [f"x{chr(surrogate)}y"] + texts[at:]
    with pytest.raises(InvalidTextError) as caught:
        direct.tokenize(texts)
    assert caught.value.index == at and chr(surrogate) not in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
field_names = st.sampled_from(["texts", "input", "query", "passages", "dense", "sparse", "colbert", "weights",
                               "truncate", "encoding_format", "dimensions", "sparse_tokens", "model"])


# A valid body of each request model: each generated body is one of these with any fields set to anything,
# so that both outcomes are drawn (random dicts alone are all but never valid).
VALID_BODIES = {EncodeBody: {"texts": ["a text"]}, OpenAIEmbeddingRequest: {"input": "a text"},
                ScoreBody: {"query": "a query", "passages": ["a passage"]}}


@pytest.mark.parametrize("model", list(VALID_BODIES), ids=lambda model: model.__name__)
def test_request_models_accept_or_name_the_field(model):
    """Any body is accepted, or refused with a 422 whose `param` names a field of that body (or `body`,
    for a rule across fields) and whose message starts with it. Both outcomes must occur: a run where every
    body validated (or none did) proved only half of it."""
    outcomes = Counter()

    @settings(max_examples=300, deadline=None, database=None)
    @given(changes=st.dictionaries(field_names, json_values, max_size=5))
    def check(changes):
        body = {**VALID_BODIES[model], **changes}
        try:
            model.model_validate(body)
        except ValidationError as exc:
            error = to_api_error(exc)
            assert error.status == 422 and error.param and error.message.startswith(error.param), (body, error)
            assert re.split(r"[.\[]", error.param)[0] in {*body, "body"}, (body, error.param)
            outcomes["refused"] += 1
        else:
            outcomes["accepted"] += 1

    check()
    assert outcomes["refused"] > 0 and outcomes["accepted"] > 0, outcomes


# ---- the live service ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url(serve_instance, encoder_config) -> str:
    serve.run(build_app({"encoder": encoder_config.model_dump(), "limits": {"max_texts_per_request": MAX_TEXTS}}),
              name="bge-m3", route_prefix="/")
    return serve_instance


@pytest.fixture(scope="module")
def replicas(url) -> list[str]:
    return model_replicas()


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def text_of(direct: Encoder, n_tokens: int) -> str:
    """A text that tokenizes to exactly `n_tokens` (special tokens included)."""
    for word in ["a", "the", "river", "x", "1"]:
        if direct.tokenize([word])[0].n_tokens == 3 and direct.tokenize([f"{word} {word}"])[0].n_tokens == 4:
            text = " ".join([word] * (n_tokens - 2))
            assert direct.tokenize([text])[0].n_tokens_full == n_tokens
            return text
    raise AssertionError("no one-token word in this tokenizer")


@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("truncate", [False, True])
def test_max_length_boundary(client, direct, delta, truncate):
    n = MAX_LENGTH + delta
    response = client.post("/encode", json={"texts": ["ok", text_of(direct, n)], "truncate": truncate})
    if delta > 0 and not truncate:
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["param"] == "texts[1]"
        assert f"{n} tokens" in error["message"] and str(MAX_LENGTH) in error["message"]
        return
    assert response.status_code == 200, response.text
    item = response.json()["data"][1]
    assert item["n_tokens"] == min(n, MAX_LENGTH) and item["truncated"] == (delta > 0)


def test_text_count_boundaries(client, direct):
    assert client.post("/encode", json={"texts": []}).status_code == 422
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 422
    full = [f"text {i}" for i in range(MAX_TEXTS)]
    body = client.post("/encode", json={"texts": full, "sparse": False}).json()
    assert [d["index"] for d in body["data"]] == list(range(MAX_TEXTS))
    for got, exp in zip(body["data"], direct.encode(full, sparse=False), strict=True):
        np.testing.assert_allclose(got["dense"], exp.dense, atol=1e-5)
    over = client.post("/encode", json={"texts": [*full, "one more"]})
    assert over.status_code == 413 and over.json()["error"]["param"] == "texts"


def test_hostile_strings_over_http(client, direct):
    texts = ["\u202eevil rtl\u202c", "\x00\x01\x7f\t\r\n", "👩‍👩‍👧‍👦" * 50, "ż" * 20000, "e\u0301" * 300, ""]
    body = client.post("/encode", json={"texts": texts}).json()
    for got, exp in zip(body["data"], direct.encode(texts), strict=True):
        np.testing.assert_allclose(got["dense"], exp.dense, atol=1e-5)
    # An unpaired surrogate is legal JSON (an escape) but not Unicode: 422 naming the index, not echoing it.
    raw = '{"texts": ["fine", "bad \\ud800 text"]}'
    response = client.post("/encode", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "texts[1]", response.text
    raw = '{"input": ["\\udfff"]}'
    response = client.post("/v1/embeddings", content=raw.encode())
    assert response.status_code == 422 and response.json()["error"]["param"] == "input[0]", response.text
    for junk in [b"\xff\xfe\x00", b"[" * 5000, b'{"texts": "not a list"}', json.dumps({"texts": [1, 2]}).encode()]:
        response = client.post("/encode", content=junk)
        assert 400 <= response.status_code < 500 and "error" in response.json(), (junk[:20], response.text)


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/embed", {"inputs": [2**63]}, "inputs"),
    ("/encode", {"token_ids": [[0, 2**64 + 5, 2]]}, "token_ids"),
], ids=["tei-one-id-of-2**63", "encode-an-id-past-2**64"])
def test_a_token_id_past_64_bits_is_a_422_naming_it_not_a_500(client, route, body, field):
    """Found by the schemathesis fuzz (POST /embed, valid mode): the schema's token ids have no maximum,
    and one that does not fit 64 bits broke the cache key (numpy int64) before the vocabulary check, a 500.
    Like any id outside the vocabulary, it is a 422 naming the item and the vocabulary's size."""
    vocab_size = client.get("/info").json()["vocab_size"]
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"].startswith(f"{field}[0]") and str(vocab_size) in error["message"], error


@pytest.fixture(scope="module")
def api_schema(url, replicas):
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def _fuzz(operation, mode, cases: Counter) -> None:
    """FUZZ_EXAMPLES schemathesis cases of one operation: never a 500, every error in the JSON shape;
    `cases` counts the calls per operation. (Hypothesis refuses `@given` on a function with defaults, so
    the operation is bound here, not as a default in a loop.)"""
    label = operation.label

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case):
        response = case.call(timeout=60)
        cases[label] += 1
        # On failure: the request as sent (hypothesis shrinks it first), so it can be replayed by hand.
        sent = f"{label} {response.request.body!r}"[:2000]
        assert response.status_code < 500, (sent, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}, (sent, response.text)

    call()


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_fuzz_http_api_never_500s_and_the_replica_survives(api_schema, client, replicas, mode):
    """Every operation in the OpenAPI schema, with schema-conforming and schema-violating requests; then the
    service is healthy on the same model replica (each mode checks its own run: no state shared with
    another test)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /encode", "POST /v1/embeddings", "POST /score"}
    cases, fuzzed = Counter(), set()
    for operation in operations:
        if mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # no parameters to get wrong
        fuzzed.add(operation.label)
        _fuzz(operation, mode, cases)
    print(f"schemathesis {mode.value} cases:", dict(cases), "total", sum(cases.values()))
    assert set(cases) == fuzzed  # every operation was really called
    assert client.get("/health").json()["status"] == "ok"
    assert model_replicas() == replicas  # the same replica all along: nothing crashed it
