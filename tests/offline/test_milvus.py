"""The offline job into Milvus Lite end to end, and examples/hybrid_search.py against a real Serve app.

One local Ray for the module: `serve_instance` starts it (and Serve); the offline job finds it running.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ray import serve

from serve_app.app import build_app
from serve_app.offline import OfflineJob, embed_corpus
from serve_app.offline.__main__ import parse_args
from serve_app.offline.milvus_sink import EMPTY_SPARSE, MilvusSink, connect
from serve_app.offline.pipeline import read_output

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray(serve_instance) -> str:
    return serve_instance


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    """The 40 corpus rows the job embeds, and one empty text (no sparse weights)."""
    lines = (ROOT / "examples" / "corpus.jsonl").read_text().splitlines()[:40]
    return {**{r["doc_id"]: r["text"] for r in map(json.loads, lines)}, "empty": ""}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, texts, encoder_config) -> dict:
    """The job over two shards into Milvus Lite (a resumed run's upserts: `test_reruns_upsert_never_duplicate`)."""
    root = tmp_path_factory.mktemp("milvus")
    (root / "in").mkdir()
    rows = [json.dumps({"doc_id": k, "text": v}) for k, v in texts.items()]
    (root / "in" / "a.jsonl").write_text("\n".join(rows[:20] + rows[40:] + ['{"doc_id": "bad", "text": null}']))
    (root / "in" / "b.jsonl").write_text("\n".join(rows[20:40]))
    job = OfflineJob(input=str(root / "in"), output=str(root / "out"), encoder=encoder_config,
                     id_field="doc_id", batch_size=8, milvus_uri=str(root / "milvus.db"))
    return {"job": job, "summary": embed_corpus(job), "client": connect(job.milvus_uri)}


def count(client, collection: str = "bge_m3") -> int:
    return client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"]


def test_each_row_once_with_its_vectors_and_text(embedded, texts, direct):
    summary, client, job = embedded["summary"], embedded["client"], embedded["job"]
    assert (summary.shards_done, summary.milvus_rows, summary.errors) == (2, 41, 1)
    assert summary.line().endswith("milvus=41")
    assert count(client) == len(texts) == 41
    shards = json.loads((Path(job.output) / "_manifest.json").read_text())["shards"]
    assert {s: c["milvus"]["rows"] for s, c in shards.items()} == {"a.jsonl": 21, "b.jsonl": 20}
    parquet = {r["id"]: r for r in read_output(job.output).to_pylist()}
    stored = {r["id"]: r for r in client.get("bge_m3", ids=list(texts), output_fields=["*"])}
    assert set(parquet) == set(stored) == set(texts)
    for key, row in parquet.items():
        got = stored[key]
        assert got["text"] == row["text"] == texts[key] and got["n_tokens"] == row["n_tokens"]
        np.testing.assert_array_equal(np.asarray(got["dense"], np.float32), np.asarray(row["dense"], np.float32))
        expected = dict(zip(row["sparse_indices"], row["sparse_values"], strict=True)) or EMPTY_SPARSE
        assert {k: np.float32(v) for k, v in got["sparse"].items()} == {k: np.float32(v) for k, v in expected.items()}
    assert parquet["empty"]["sparse_indices"] == [] and stored["empty"]["sparse"].keys() == EMPTY_SPARSE.keys()
    for key, exp in zip(["doc-0000", "doc-0031"], direct.encode([texts["doc-0000"], texts["doc-0031"]]), strict=True):
        np.testing.assert_allclose(stored[key]["dense"], exp.dense, atol=1e-5)
        assert sorted(stored[key]["sparse"]) == exp.sparse_indices.tolist()


def test_dense_search_finds_each_row_itself(embedded, texts):
    client = embedded["client"]
    rows = client.get("bge_m3", ids=list(texts), output_fields=["dense"])
    hits = client.search("bge_m3", data=[r["dense"] for r in rows], anns_field="dense", limit=1,
                         search_params={"metric_type": "IP"})
    assert len(rows) == len(texts) and [h[0]["id"] for h in hits] == [r["id"] for r in rows]
    assert all(h[0]["distance"] == pytest.approx(1.0, abs=1e-4) for h in hits)


def test_reruns_upsert_never_duplicate(embedded, texts):
    client, job = embedded["client"], embedded["job"]
    again = embed_corpus(job)  # nothing to do
    assert (again.shards_skipped, again.milvus_rows, count(client)) == (2, 0, 41)
    # A crash after shard b was upserted but before it was recorded: the resumed run redoes and re-upserts it.
    manifest = Path(job.output) / "_manifest.json"
    state = json.loads(manifest.read_text())
    del state["shards"]["b.jsonl"]
    manifest.write_text(json.dumps(state))
    redone = embed_corpus(job)
    assert (redone.shards_done, redone.shards_skipped, redone.milvus_rows, count(client)) == (1, 1, 20, 41)
    assert redone.line().endswith("milvus=20")
    assert json.loads(manifest.read_text())["shards"]["b.jsonl"]["milvus"]["rows"] == 20
    # Another collection: the finished shards are upserted there from their parquet, not re-encoded.
    elsewhere = embed_corpus(job.model_copy(update={"milvus_collection": "copy"}))
    assert (elsewhere.shards_done, elsewhere.rows, elsewhere.milvus_rows, count(client, "copy")) == (0, 0, 41, 41)
    with pytest.raises(ValueError, match="different job"):  # its parquet holds the text; this one's would not
        embed_corpus(job.model_copy(update={"milvus_uri": None}))


def test_sink_keeps_the_last_row_of_an_id_and_refuses_another_dim(tmp_path):
    def table(ids, dim, sparse):
        dense = pa.FixedSizeListArray.from_arrays(pa.array(np.eye(len(ids), dim, dtype=np.float32).ravel()), dim)
        return pa.table({"id": ids, "dense": dense, "sparse_indices": [list(s) for s in sparse],
                         "sparse_values": [list(s.values()) for s in sparse], "n_tokens": [3] * len(ids),
                         "text": [f"text {i}" for i in range(len(ids))]})

    sink = MilvusSink(str(tmp_path / "sub" / "m.db"), "direct", batch_size=2)  # the folder is created
    # Batches ["x", "x"] and ["y"]: one batch must not repeat an id (Milvus >= 2.6 refuses it).
    assert sink.upsert(table(["x", "x", "y"], 4, [{5: 0.5}, {7: 0.25}, {}])) == 2
    assert count(sink.client, "direct") == 2
    got = {r["id"]: r for r in sink.client.get("direct", ids=["x", "y"], output_fields=["sparse", "text"])}
    assert (got["x"]["sparse"], got["x"]["text"]) == ({7: 0.25}, "text 1")
    assert got["y"]["sparse"].keys() == EMPTY_SPARSE.keys()
    MilvusSink(sink.uri, "narrow").ensure_collection(8)
    with pytest.raises(ValueError, match="8-dim dense vectors, this model makes 4-dim"):
        MilvusSink(sink.uri, "narrow").upsert(table(["z"], 4, [{1: 1.0}]))


def test_cli_milvus_flags_set_the_target_and_only_then_the_text_is_part_of_the_identity(direct):
    job = parse_args(["--input", "in", "--output", "out", "--milvus-uri", "out/m.db", "--milvus-collection", "c"])
    assert (job.milvus_uri, job.milvus_collection) == ("out/m.db", "c")
    assert job.identity(direct.identity)["text"] is True
    plain = parse_args(["--input", "in", "--output", "out"])
    assert (plain.milvus_uri, plain.milvus_collection) == (None, "bge_m3")
    assert "text" not in plain.identity(direct.identity)


def test_hybrid_search_example_ranks_each_passage_first_for_its_own_text(embedded, texts, encoder_config, local_ray,
                                                                        capsys):
    serve.run(build_app({"encoder": encoder_config.model_dump()}), name="bge-m3", route_prefix="/")
    spec = importlib.util.spec_from_file_location("hybrid_search", ROOT / "examples" / "hybrid_search.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    uri = embedded["job"].milvus_uri
    for key in ("doc-0003", "doc-0025"):  # one per shard: a passage's own text finds it first
        results = example.search(texts[key], uri, url=local_ray, top_k=5, candidates_k=20)
        assert len(results) == 5 and results[0]["id"] == key
        assert results[0]["colbert"] == pytest.approx(1.0, abs=1e-4)
        assert results[0]["dense"] == pytest.approx(1.0, abs=1e-4)
        assert [r["colbert"] for r in results] == sorted((r["colbert"] for r in results), reverse=True)
        assert {"sparse", "colbert+sparse+dense", "rrf", "text"} <= set(results[0])
    example.main(["--milvus-uri", uri, "--url", local_ray, "--top-k", "3", texts["doc-0010"]])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(" 1. doc-0010  colbert=")
