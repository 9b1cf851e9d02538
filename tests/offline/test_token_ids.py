"""The offline job on a token-id column (JSONL arrays, parquet `list<int32>`): it writes what the encoder gives
for the texts, and a row with bad ids goes to the errors with its file, line, id and the core's reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serve_app.offline import OfflineJob, embed_corpus
from serve_app.offline.pipeline import read_output
from tests.offline.corpora import rows_by_id, write_jsonl

TEXTS = ["how do plants make food", "東京タワーの高さは333メートルです", "a third, longer text " * 6]


@pytest.fixture(scope="module", autouse=True)
def _ray(local_ray) -> None:
    """Ray Data jobs on the suite's local Ray."""


@pytest.fixture(scope="module")
def token_ids(direct) -> list[list[int]]:
    return [t.ids for t in direct.tokenize(TEXTS)]


def test_a_token_id_column_gives_what_the_texts_give_and_bad_rows_are_filed_with_file_line_and_id(
        tmp_path, encoder_config, direct, token_ids):
    vocab = direct.tokenizer.vocab_size
    bad = [{"key": "over", "ids": [0, 5, vocab, 2]}, {"key": "empty", "ids": []}, {"key": "strings", "ids": ["0", "5"]},
           {"key": "negative", "ids": [0, -1, 2]}, {"key": "missing"}, {"key": "float", "ids": [0, 1.5, 2]}]
    rows = [{"key": f"r{i}", "ids": ids} for i, ids in enumerate(token_ids[:2])] + bad
    write_jsonl(tmp_path / "ids" / "a.jsonl", rows)
    pq.write_table(pa.table({"key": ["r2", "p-over"],
                             "ids": pa.array([token_ids[2], [0, vocab + 1, 2]], pa.list_(pa.int32()))}),
                   tmp_path / "ids" / "b.parquet")

    summary = embed_corpus(OfflineJob(input=str(tmp_path / "ids"), output=str(tmp_path / "out"),
                                      encoder=encoder_config, id_field="key", ids_field="ids"))
    assert summary.rows == 3 and summary.errors == len(bad) + 1
    assert summary.tokens == sum(len(ids) for ids in token_ids)
    # What the texts give: the direct encoder's outputs for them (the text path is proven equal to it in
    # test_pipeline), so no second job is needed.
    got = rows_by_id(tmp_path / "out")
    assert sorted(got) == ["r0", "r1", "r2"]
    for key, expected in zip(("r0", "r1", "r2"), direct.encode(TEXTS), strict=True):
        np.testing.assert_allclose(got[key]["dense"], expected.dense, rtol=0, atol=1e-5)
        assert got[key]["sparse_indices"] == expected.sparse_indices.tolist()
        np.testing.assert_allclose(got[key]["sparse_values"], expected.sparse_values, rtol=0, atol=1e-5)
        assert got[key]["n_tokens"] == expected.n_tokens

    errors = {(Path(e["file"]).name, e["row"]): (e["id"], e["error"])
              for e in read_output(str(tmp_path / "out"), "errors").to_pylist()}
    assert errors == {
        ("a.jsonl", 3): ("over", f"token ids[2] is {vocab}, outside the vocabulary [0, {vocab})"),
        ("a.jsonl", 4): ("empty", "empty list of token ids"),
        ("a.jsonl", 5): ("strings", "token ids[0] is a str, not an integer"),
        ("a.jsonl", 6): ("negative", "token ids[1] is -1, outside any vocabulary"),
        ("a.jsonl", 7): ("missing", "missing field 'ids'"),
        ("a.jsonl", 8): ("float", "token ids[1] is a float, not an integer"),
        ("b.parquet", 2): ("p-over", f"token ids[1] is {vocab + 1}, outside the vocabulary [0, {vocab})"),
    }


def test_token_ids_are_refused_before_any_work_where_they_cannot_be_read_or_stored(tmp_path, encoder_config):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("key,ids\nr0,\"[0, 5, 2]\"\n")
    with pytest.raises(ValueError, match="CSV has no lists"):
        embed_corpus(OfflineJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), encoder=encoder_config,
                                ids_field="ids"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="ids_field rows have none"):
        OfflineJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), ids_field="ids",
                   milvus_uri=str(tmp_path / "m.db"))
