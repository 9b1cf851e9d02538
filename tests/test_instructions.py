"""Queries and passages: with instructions configured (`args.encoder.instructions`), a text sent as a query
(or passage) is encoded as that instruction + the text, on every route and offline; without one for a
side, saying the side changes nothing; an unknown side is a 422 naming the allowed values."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from ray import serve

from serve_app.app import build_app
from serve_app.core.config import EncoderConfig, Instructions
from serve_app.core.encoder import Encoder
from serve_app.core.scoring import ScoreWeights, compute_scores
from serve_app.offline import OfflineJob, embed_corpus
from serve_app.offline.pipeline import read_output

QUERY = "Represent this sentence for searching relevant passages: "
TEXTS = ["how do plants make food", "東京タワーの高さ"]


@pytest.fixture(scope="module")
def instructed_config(encoder_config) -> EncoderConfig:
    # A query instruction only: passages are sent as they are. (`direct`, the shared encoder, has no
    # instructions: what a plain text gives.)
    return encoder_config.model_copy(update={"instructions": Instructions(query=QUERY)})


@pytest.fixture(scope="module")
def client(serve_instance, instructed_config):
    serve.run(build_app({"encoder": instructed_config.model_dump(), "cache": {"backend": "memory"}}), name="instr",
              route_prefix="/instr")
    with httpx.Client(base_url=f"{serve_instance}/instr", timeout=60) as c:
        yield c
    serve.delete("instr")


def _dense(direct: Encoder, texts: list[str]) -> list[np.ndarray]:
    return [e.dense for e in direct.encode(texts, dense=True, sparse=True)]


def test_a_query_is_encoded_as_the_instruction_plus_the_text_on_every_route(client, direct):
    expected = direct.encode([QUERY + t for t in TEXTS], dense=True, sparse=True)
    openai = client.post("/v1/embeddings", json={"input": TEXTS, "input_type": "query"})
    native = client.post("/encode", json={"texts": TEXTS, "input_type": "query"})
    tei = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "query"})
    for response in (openai, native, tei):
        assert response.status_code == 200, response.text
    for i, exp in enumerate(expected):
        np.testing.assert_allclose(openai.json()["data"][i]["embedding"], exp.dense, atol=1e-5)
        np.testing.assert_allclose(native.json()["data"][i]["dense"], exp.dense, atol=1e-5)
        np.testing.assert_allclose(tei.json()[i], exp.dense, atol=1e-5)
        sparse = native.json()["data"][i]["sparse"]
        assert sparse["indices"] == exp.sparse_indices.tolist()
        np.testing.assert_allclose(sparse["values"], exp.sparse_values, atol=1e-5)
    # usage counts the tokens encoded, the instruction's included
    encoded = direct.tokenize([QUERY + t for t in TEXTS])
    assert openai.json()["usage"]["prompt_tokens"] == sum(t.n_tokens for t in encoded)


def test_a_side_without_an_instruction_and_no_side_at_all_encode_the_text_as_sent(client, direct):
    plain = _dense(direct, TEXTS)
    for body in ({"input": TEXTS, "input_type": "passage"}, {"input": TEXTS}):
        response = client.post("/v1/embeddings", json=body)
        assert response.status_code == 200, response.text
        for got, exp in zip(response.json()["data"], plain, strict=True):
            np.testing.assert_allclose(got["embedding"], exp, atol=1e-5)


def test_the_cache_never_answers_a_query_with_the_plain_texts_vector(client, direct):
    text = ["a text sent plainly first, then as a query"]
    plain = client.post("/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"]
    query = client.post("/v1/embeddings", json={"input": text, "input_type": "query"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(plain, _dense(direct, text)[0], atol=1e-5)
    np.testing.assert_allclose(query, _dense(direct, [QUERY + text[0]])[0], atol=1e-5)


def test_score_encodes_its_query_as_a_query_and_its_passages_as_passages(client, direct):
    passages = ["plants use sunlight to make sugar", "the tower is 333 metres tall"]
    response = client.post("/score", json={"query": TEXTS[0], "passages": passages})
    assert response.status_code == 200, response.text
    query = direct.encode([QUERY + TEXTS[0]], dense=True, sparse=True, colbert=True)[0]
    for got, passage in zip(response.json()["data"], direct.encode(passages, dense=True, sparse=True, colbert=True),
                            strict=True):
        expected = compute_scores(query, passage, ScoreWeights())
        assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-4)


def test_tokenize_with_a_prompt_name_shows_the_instruction_tokens(client, direct):
    response = client.post("/tokenize", json={"inputs": TEXTS[0], "prompt_name": "query"})
    assert response.status_code == 200, response.text
    assert [t["id"] for t in response.json()[0]] == direct.tokenize([QUERY + TEXTS[0]])[0].ids


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/v1/embeddings", {"input": "x", "input_type": "document"}, "input_type"),
    ("/encode", {"texts": ["x"], "input_type": "Query"}, "input_type"),
    ("/embed", {"inputs": "x", "prompt_name": "doc"}, "prompt_name"),
])
def test_an_unknown_side_is_a_422_naming_the_allowed_values(client, route, body, field):
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field and "'query'" in error["message"] and "'passage'" in error["message"]


def test_info_and_models_report_the_instructions(client):
    assert client.get("/info").json()["instructions"] == {"query": QUERY, "passage": None}
    assert client.get("/v1/models").json()["data"][0]["instructions"] == {"query": QUERY, "passage": None}


def test_the_offline_job_with_input_type_query_writes_what_the_service_answers(local_ray, tmp_path, instructed_config,
                                                                              client):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "q.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n"
                                                     for i, t in enumerate(TEXTS)))
    job = OfflineJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), encoder=instructed_config,
                     id_field="id", input_type="query", num_cpus=1)
    summary = embed_corpus(job)
    assert summary.rows == len(TEXTS) and summary.errors == 0
    table = read_output(str(tmp_path / "out")).to_pydict()
    online = client.post("/v1/embeddings", json={"input": TEXTS, "input_type": "query"}).json()["data"]
    for key, dense in zip(table["id"], table["dense"], strict=True):
        np.testing.assert_allclose(dense, online[int(key[1:])]["embedding"], atol=1e-5)
