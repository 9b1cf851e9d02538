"""Queries and passages: with instructions configured (`args.encoder.instructions`), a text sent as a query
or as a passage is encoded as that side's instruction + the text, on every route and offline; without one
for a side, saying that side changes nothing; an unknown side is a 422 naming the allowed values.

Two apps, deployed together: "instr" (a query and a passage instruction) and "query-only" (a query
instruction only). The shared `direct` encoder has none: what a plain text gives.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from ray import serve

from serve_app.app import build_app, build_service
from serve_app.core.config import EncoderConfig, Instructions
from serve_app.core.scoring import ScoreWeights, compute_scores
from serve_app.offline import OfflineJob, embed_corpus
from serve_app.offline.pipeline import read_output

QUERY = "Represent this sentence for searching relevant passages: "
PASSAGE = "Passage for retrieval: "
TEXTS = ["how do plants make food", "東京タワーの高さ"]
PASSAGES = ["plants use sunlight to make sugar", "the tower is 333 metres tall"]
SIDES = {"query": QUERY, "passage": PASSAGE}
ATOL = 1e-5  # served and direct vectors of one text (fp32, the same checkpoint)


def _told_apart(a, b) -> bool:
    """Whether two vectors differ by far more than ATOL: what a comparison at ATOL can tell apart. (On the
    small random checkpoint an instruction moves a vector by ~1e-3, not by much more.)"""
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 10 * ATOL


@pytest.fixture(scope="module")
def instructed_config(encoder_config) -> EncoderConfig:
    """The shared settings with both instructions ("instr")."""
    return encoder_config.model_copy(update={"instructions": Instructions(query=QUERY, passage=PASSAGE)})


@pytest.fixture(scope="module")
def apps(serve_instance, instructed_config) -> str:
    """"instr" at /instr and "query-only" at /query-only (its model replica on half a CPU, so that both apps
    and the offline job's actor fit the suite's Ray); the server's base URL."""
    query_only = instructed_config.model_copy(update={"instructions": Instructions(query=QUERY)})
    serve.run_many([
        serve.RunTarget(build_app({"encoder": instructed_config.model_dump(), "cache": {"backend": "memory"}}),
                        name="instr", route_prefix="/instr"),
        serve.RunTarget(build_service({"encoder": query_only.model_dump(), "cache": {"backend": "memory"}},
                                      model_options={"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0}}),
                        name="query-only", route_prefix="/query-only")])
    yield serve_instance
    serve.delete("instr")
    serve.delete("query-only")


@pytest.fixture(scope="module")
def client(apps):
    """The app with both instructions."""
    with httpx.Client(base_url=f"{apps}/instr", timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def query_only(apps):
    """The app with a query instruction and no passage instruction."""
    with httpx.Client(base_url=f"{apps}/query-only", timeout=60) as c:
        yield c


def _post(client: httpx.Client, path: str, body: dict):
    response = client.post(path, json=body)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def _dense_on_every_route(client: httpx.Client, texts: list[str], side: str | None) -> dict[str, list]:
    """Each text's dense vector as /v1/embeddings, /encode and TEI's /embed answer it, sent as `side`."""
    openai = {"input": texts} if side is None else {"input": texts, "input_type": side}
    native = {"texts": texts} if side is None else {"texts": texts, "input_type": side}
    tei = {"inputs": texts} if side is None else {"inputs": texts, "prompt_name": side}
    return {"/v1/embeddings": [d["embedding"] for d in _post(client, "/v1/embeddings", openai)["data"]],
            "/encode": [d["dense"] for d in _post(client, "/encode", native)["data"]],
            "/embed": _post(client, "/embed", tei)}


@pytest.mark.parametrize("side", list(SIDES))
def test_a_text_sent_as_a_side_is_encoded_as_its_instruction_plus_the_text_on_every_route(client, direct,
                                                                                         hf_tokenizer, side):
    instructed = [SIDES[side] + t for t in TEXTS]
    expected = direct.encode(instructed, dense=True, sparse=True)
    plain = direct.encode(TEXTS, dense=True, sparse=False)
    for route, vectors in _dense_on_every_route(client, TEXTS, side).items():
        for got, exp, other in zip(vectors, expected, plain, strict=True):
            np.testing.assert_allclose(got, exp.dense, atol=ATOL, err_msg=route)
            assert _told_apart(exp.dense, other.dense), route  # the comparison can tell a plain text's vector
    native = _post(client, "/encode", {"texts": TEXTS, "input_type": side})
    for item, exp in zip(native["data"], expected, strict=True):
        assert item["sparse"]["indices"] == exp.sparse_indices.tolist()
        np.testing.assert_allclose(item["sparse"]["values"], exp.sparse_values, atol=ATOL)
    # usage counts the tokens encoded, the instruction's included (the checkpoint's own tokenizer's count)
    usage = _post(client, "/v1/embeddings", {"input": TEXTS, "input_type": side})["usage"]
    assert usage["prompt_tokens"] == sum(len(ids) for ids in hf_tokenizer(instructed)["input_ids"])


def test_a_side_without_an_instruction_and_no_side_at_all_encode_the_text_as_sent(client, query_only, direct):
    plain = [e.dense for e in direct.encode(TEXTS, dense=True, sparse=False)]
    for app, vectors in [("query-only, as passages", _dense_on_every_route(query_only, TEXTS, "passage")),
                         ("query-only, no side", _dense_on_every_route(query_only, TEXTS, None)),
                         ("instr, no side", _dense_on_every_route(client, TEXTS, None))]:
        for route, got in vectors.items():
            for g, exp in zip(got, plain, strict=True):
                np.testing.assert_allclose(g, exp, atol=ATOL, err_msg=f"{app}: {route}")


def test_the_cache_never_answers_one_side_with_another_sides_vector(client, direct):
    """The same text sent plainly, as a query, as a passage and plainly again: each gets its own vector."""
    text = "a text sent plainly, then as a query, then as a passage"
    expected = {side: direct.encode([prefix + text], sparse=False)[0].dense
                for side, prefix in [(None, ""), ("query", QUERY), ("passage", PASSAGE)]}
    assert _told_apart(expected[None], expected["query"]) and _told_apart(expected[None], expected["passage"])
    assert _told_apart(expected["query"], expected["passage"])
    for side in (None, "query", "passage", None):
        body = {"input": [text]} if side is None else {"input": [text], "input_type": side}
        got = _post(client, "/v1/embeddings", body)["data"][0]["embedding"]
        np.testing.assert_allclose(got, expected[side], atol=ATOL, err_msg=str(side))


@pytest.mark.parametrize(("app", "passage_prefix"), [("instr", PASSAGE), ("query-only", "")])
def test_score_encodes_its_query_as_a_query_and_its_passages_as_passages(client, query_only, direct, app,
                                                                         passage_prefix):
    """With a passage instruction, /score's passages are encoded after it; without one, as sent."""
    scores = _post(client if app == "instr" else query_only, "/score", {"query": TEXTS[0], "passages": PASSAGES})
    query = direct.encode([QUERY + TEXTS[0]], dense=True, sparse=True, colbert=True)[0]
    passages = direct.encode([passage_prefix + p for p in PASSAGES], dense=True, sparse=True, colbert=True)
    other_prefix = "" if passage_prefix else PASSAGE  # what the passages would score with the other rule
    others = direct.encode([other_prefix + p for p in PASSAGES], dense=True, sparse=True, colbert=True)
    for got, passage, other in zip(scores["data"], passages, others, strict=True):
        expected = compute_scores(query, passage, ScoreWeights())
        assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-4)
        assert compute_scores(query, other, ScoreWeights()) != pytest.approx(expected, abs=1e-4)  # told apart


@pytest.mark.parametrize("side", list(SIDES))
def test_tokenize_with_a_prompt_name_shows_the_instruction_tokens(client, hf_tokenizer, side):
    tokens = _post(client, "/tokenize", {"inputs": TEXTS[0], "prompt_name": side})
    assert [t["id"] for t in tokens[0]] == hf_tokenizer(SIDES[side] + TEXTS[0])["input_ids"]


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


def test_info_and_models_report_the_instructions(client, query_only):
    for app, instructions in ((client, SIDES), (query_only, {"query": QUERY, "passage": None})):
        assert app.get("/info").json()["instructions"] == instructions
        assert app.get("/v1/models").json()["data"][0]["instructions"] == instructions


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
    assert sorted(table["id"]) == [f"q{i}" for i in range(len(TEXTS))]
    for key, dense in zip(table["id"], table["dense"], strict=True):
        np.testing.assert_allclose(dense, online[int(key[1:])]["embedding"], atol=ATOL)
