"""The offline Ray Data job end to end on the small checkpoint: values, errors, streaming, schema, the CLI.

Two jobs serve every test here that needs one (Ray Data's actor start-up costs ~10 s a job): `keyed`, run
as a user runs it (`python -m serve_app.offline`), and `numbered`, run from Python with a progress callback.
Each test writes its inputs into a folder of its own under the job's input root and reads back its shards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

from serve_app.offline import OfflineJob, Summary, embed_corpus
from serve_app.offline.inputs import find_inputs
from serve_app.offline.pipeline import read_output
from tests.offline.corpora import encoder_flags, manifest, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _ray(local_ray) -> None:
    """Every test here runs Ray Data jobs on the suite's local Ray."""


class Run:
    """One job's finished output, shared read-only by the tests that check a part of it (`part`)."""

    def __init__(self, root: Path, output: Path, summary: Summary):
        self.root, self.out, self.summary = root, output, summary
        self.shards = manifest(output)["shards"]
        self.seen: list[tuple[int, int | None]] = []  # the progress callback's (rows done, total), when given
        self.sample_ids: list[str] = []  # the ids of the shipped sample's rows, when embedded

    def part(self, folder: str) -> tuple[pa.Table, pa.Table, dict]:
        """The data and error rows of the inputs under `root/folder`, and their shards' recorded counts."""
        names = sorted(s for s in self.shards if s.startswith(f"{folder}__"))
        assert names, folder
        data = pa.concat_tables([pq.read_table(self.out / "data" / s) for s in names
                                 if (self.out / "data" / s).exists()])
        errors = read_output(str(self.out), "errors")
        if errors.num_columns:  # else the job had no errors at all
            errors = errors.filter(pc.starts_with(errors.column("file"), str(self.root / folder) + os.sep))
        counts = {key: sum(self.shards[s][key] for s in names) for key in ("rows", "errors", "tokens")}
        return data, errors, counts


def mixed_corpus(root: Path, mixed_texts: list[str]) -> None:
    write_jsonl(root / "a.jsonl", [{"doc_id": f"a{i}", "text": t} for i, t in enumerate(mixed_texts)] + [
        {"doc_id": "null", "text": None}, {"doc_id": "number", "text": 42}, {"doc_id": "dup", "text": "first copy"},
        {"doc_id": "no-text"}, "not json at all", '{"doc_id": "surrogate", "text": "bad \\ud800 escape"}'])
    pq.write_table(pa.table({"doc_id": ["p0", "p1", "dup", "p3"],
                             "text": ["パーケットの文章です", "", "second copy 東京", None]}), root / "b.parquet")


NEWLINE_TEXTS = {"ls\u2028id": "first paragraph\u2028second paragraph", "ps": "one\u2029two",
                 "nel": "next\u0085line", "crlf": "a line ending in CR LF"}


def newline_corpus(root: Path) -> None:
    lines = [json.dumps({"doc_id": k, "text": t}, ensure_ascii=False) for k, t in NEWLINE_TEXTS.items()]
    raw = ("\n".join(lines[:3]) + "\n" + lines[3] + "\r\n").encode()
    assert all(sep.encode() in raw for sep in ("\u2028", "\u2029", "\u0085"))  # raw, as JSON allows
    root.mkdir(parents=True)
    (root / "u.jsonl").write_bytes(raw)


BAD_UTF8 = b'{"doc_id": "latin1", "text": "caf\xe9"}'


def error_corpus(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "a.jsonl").write_bytes(b"\n".join([
        b'\xef\xbb\xbf{"doc_id": "bom", "text": "a byte order mark before the first line"}',  # 1
        b"",                                                                                  # 2: blank, skipped
        b'{"doc_id": "ok", "text": "fine"}',                                                  # 3
        b"not json",                                                                          # 4
        b"  \r",                                                                              # 5: blank, skipped
        b'{"doc_id": "null", "text": null}',                                                  # 6
        BAD_UTF8,                                                                             # 7
        b'{"text": "no id"}',                                                                 # 8
        b'{"doc_id": "last", "text": "no newline at the end"}',                               # 9
    ]))
    (root / "b.csv").write_text("doc_id,body\nc1,hello\nc2,world\n")  # no `text` column
    pq.write_table(pa.table({"doc_id": [f"p{i}" for i in range(5)], "text": ["x", "y", None, "z", None]}),
                   root / "c.parquet", row_group_size=2)


SAMPLE_ROWS = 40  # of the shipped sample, examples/corpus.jsonl


def sample_corpus(root: Path) -> list[str]:
    """The first rows of the shipped sample, as a user would embed it; their ids."""
    lines = (ROOT / "examples" / "corpus.jsonl").read_text().splitlines(True)[:SAMPLE_ROWS]
    root.mkdir(parents=True)
    (root / "sample.jsonl").write_text("".join(lines))
    return [json.loads(line)["doc_id"] for line in lines]


def summary_of(stdout: str) -> Summary:
    """The CLI's `done:` line read back into the counts of a `Summary`."""
    done = [line for line in stdout.splitlines() if line.startswith("done: ")]
    assert len(done) == 1, stdout
    counts = dict(re.findall(r"\b(rows|tokens|errors|done|skipped|pending)=(\d+)\b", done[0]))
    return Summary(rows=counts["rows"], tokens=counts["tokens"], errors=counts["errors"],
                   shards_done=counts["done"], shards_skipped=counts["skipped"], shards_pending=counts["pending"])


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, encoder_config, mixed_texts) -> Run:
    """One job run by the CLI, as a user runs it (joining this module's Ray), with an id field and ColBERT
    vectors, over the inputs of several tests, one folder each; the shipped sample's ids in `sample_ids`."""
    root = tmp_path_factory.mktemp("keyed")
    mixed_corpus(root / "mixed", mixed_texts)
    newline_corpus(root / "newline")
    error_corpus(root / "errors")
    sample_ids = sample_corpus(root / "sample")
    output = root.parent / f"{root.name}-out"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cli = subprocess.run([sys.executable, "-m", "serve_app.offline", "--input", str(root), "--output", str(output),
                          *encoder_flags(encoder_config), "--id-field", "doc_id", "--colbert", "--batch-size", "4"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert cli.returncode == 0, cli.stderr[-3000:]
    run = Run(root, output, summary_of(cli.stdout))
    run.sample_ids = sample_ids
    return run


NUMBERED = [f"line {i} 東京 " + "word " * (i % 9) for i in range(25)]
STREAMED = [f"streamed row {i} " + "word " * (i % 7) for i in range(600)]
GLOB_TEXTS = {"en": ["the river museum", "a quiet library"], "ja": ["東京の図書館", "川の博物館", "駅の近く"]}


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, encoder_config) -> Run:
    """One job from Python without an id field, over a glob (`root/*/*.jsonl`) of the inputs of several tests,
    in small blocks (`batch_bytes` 1 KiB), with the progress it reported (`seen`: rows done, total)."""
    root = tmp_path_factory.mktemp("numbered")
    write_jsonl(root / "lines" / "c.jsonl", [{"text": t} for t in NUMBERED])
    for folder, rows in GLOB_TEXTS.items():  # the same file name in two folders
        write_jsonl(root / folder / "part-0.jsonl", [{"text": t} for t in rows])
    write_jsonl(root / "stream" / "s.jsonl", [{"text": t} for t in STREAMED])  # the last shard
    job = OfflineJob(input=str(root / "*" / "*.jsonl"), output=str(root.parent / f"{root.name}-out"),
                     encoder=encoder_config, batch_bytes=1024)
    seen: list[tuple[int, int | None]] = []
    run = Run(root, Path(job.output), embed_corpus(job, on_progress=lambda p: seen.append((p.rows, p.total))))
    run.seen = seen
    return run


def by_id(table: pa.Table) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    for row in table.to_pylist():
        rows[row["id"]].append(row)
    return rows


def test_mixed_corpus_rows_carry_the_direct_encoders_outputs_and_bad_rows_their_reason(keyed, direct, mixed_texts):
    data, errors, counts = keyed.part("mixed")
    expected_texts = {f"a{i}": [t] for i, t in enumerate(mixed_texts)}
    expected_texts.update({"p0": ["パーケットの文章です"], "p1": [""], "dup": ["first copy", "second copy 東京"]})
    assert counts["rows"] == data.num_rows == sum(len(v) for v in expected_texts.values())
    assert counts["errors"] == errors.num_rows == 6
    got = by_id(data)
    assert set(got) == set(expected_texts)
    for doc_id, texts in expected_texts.items():
        rows = sorted(got[doc_id], key=lambda r: r["dense"][0])
        expected = sorted(direct.encode(texts, colbert=True), key=lambda e: e.dense[0])
        for row, exp in zip(rows, expected, strict=True):
            np.testing.assert_allclose(row["dense"], exp.dense, atol=1e-5)
            assert row["sparse_indices"] == exp.sparse_indices.tolist()
            np.testing.assert_allclose(row["sparse_values"], exp.sparse_values, atol=1e-5)
            np.testing.assert_allclose(np.array(row["colbert"]), exp.colbert, atol=1e-5)
            assert (row["n_tokens"], row["truncated"]) == (exp.n_tokens, exp.truncated)
    assert counts["tokens"] == sum(r["n_tokens"] for r in data.to_pylist())
    reasons = {r["id"]: r["error"] for r in errors.to_pylist() if r["id"] is not None}
    assert reasons == {"null": "null text", "number": "text is a int, not a string",
                       "no-text": "missing field 'text'", "p3": "null text",
                       "surrogate": "text contains an unpaired UTF-16 surrogate (not valid Unicode)"}
    assert errors.num_rows - len(reasons) == 1  # the line that is not JSON has no id to give


def test_summary_counts_what_the_run_wrote_over_all_its_shards(keyed):
    summary, out = keyed.summary, str(keyed.out)
    all_data, all_errors = read_output(out), read_output(out, "errors")
    assert (summary.rows, summary.errors) == (all_data.num_rows, all_errors.num_rows) != (0, 0)
    assert summary.tokens == sum(all_data.column("n_tokens").to_pylist())
    assert (summary.shards_done, summary.shards_skipped, summary.shards_pending) == (len(keyed.shards), 0, 0)
    assert len(keyed.shards) == len(find_inputs(str(keyed.root)))


def test_cli_embeds_the_shipped_sample(keyed, direct):
    data, errors, counts = keyed.part("sample")
    assert (counts["rows"], counts["errors"], errors.num_rows) == (SAMPLE_ROWS, 0, 0)
    assert data.column("id").to_pylist() == keyed.sample_ids  # in file order, each once
    texts = [json.loads(line)["text"] for line in (keyed.root / "sample" / "sample.jsonl").read_text().splitlines()]
    for row, exp in zip(data.to_pylist(), direct.encode(texts), strict=True):
        np.testing.assert_allclose(row["dense"], exp.dense, atol=1e-5)


def test_row_numbers_are_ids_without_an_id_field(numbered, direct):
    data, _, _ = numbered.part("lines")
    got = {r["id"]: r["dense"] for r in data.to_pylist()}
    assert set(got) == {f"lines__c.jsonl:{i}" for i in range(25)}
    for i, exp in enumerate(direct.encode(NUMBERED)):
        np.testing.assert_allclose(got[f"lines__c.jsonl:{i}"], exp.dense, atol=1e-5)


def test_parquet_schema_is_plain_arrow_readable_without_ray(keyed, direct):
    files = [f for f in (keyed.out / "data").rglob("*.parquet") if f.is_file()]  # not the folder b.parquet
    assert files
    schema = pq.read_schema(files[0])
    dim = direct.dim
    assert schema.names == ["id", "dense", "sparse_indices", "sparse_values", "colbert", "n_tokens", "truncated"]
    assert schema.field("id").type == pa.string()
    assert schema.field("dense").type == pa.list_(pa.float32(), dim)
    assert schema.field("sparse_indices").type == pa.list_(pa.int32())
    assert schema.field("sparse_values").type == pa.list_(pa.float32())
    assert schema.field("colbert").type == pa.list_(pa.list_(pa.float32(), dim))
    assert schema.field("n_tokens").type == pa.int32() and schema.field("truncated").type == pa.bool_()
    assert not any(isinstance(f.type, pa.ExtensionType) for f in schema)
    frame = pq.read_table(files[0]).to_pandas()  # readable without Ray
    assert len(frame["dense"][0]) == dim


def test_shard_names_are_paths_relative_to_the_input_root(tmp_path):
    for folder in ("en", "ja"):
        write_jsonl(tmp_path / "corpus" / folder / "part-0.jsonl", [{"text": folder}])
    corpus = tmp_path / "corpus"
    both = [(corpus / folder / "part-0.jsonl", f"{folder}__part-0.jsonl") for folder in ("en", "ja")]
    for pattern in (corpus / "*" / "*.jsonl", corpus / "**" / "*.jsonl", corpus / "*", corpus):
        assert [tuple(f) for f in find_inputs(str(pattern))] == both, pattern
    # Up to the first wildcard: a wildcard in the file name leaves the folder as the root.
    assert [tuple(f) for f in find_inputs(str(corpus / "en" / "part-*.jsonl"))] == [(both[0][0], "part-0.jsonl")]
    assert [tuple(f) for f in find_inputs(str(corpus / "ja" / "part-0.jsonl"))] == [(both[1][0], "part-0.jsonl")]


def test_glob_embeds_same_named_files_of_different_folders(numbered, direct):
    shards = {s: (c["rows"], c["errors"]) for s, c in numbered.shards.items() if s.endswith("part-0.jsonl")}
    assert shards == {"en__part-0.jsonl": (2, 0), "ja__part-0.jsonl": (3, 0)}
    assert (numbered.summary.shards_done, numbered.summary.shards_skipped) == (4, 0)  # with lines/, stream/
    got = {r["id"]: r["dense"] for folder in GLOB_TEXTS for r in numbered.part(folder)[0].to_pylist()}
    expected = {f"{folder}__part-0.jsonl:{i}": t for folder, rows in GLOB_TEXTS.items() for i, t in enumerate(rows)}
    assert set(got) == set(expected)
    for key, exp in zip(expected, direct.encode(list(expected.values())), strict=True):
        np.testing.assert_allclose(got[key], exp.dense, atol=1e-5)


def test_inputs_sharing_a_shard_name_are_refused_before_any_work(tmp_path, encoder_config):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier run's output, which --overwrite would delete")
    write_jsonl(tmp_path / "slash" / "a" / "b.jsonl", [{"text": "one"}])
    write_jsonl(tmp_path / "slash" / "a__b.jsonl", [{"text": "two"}])
    write_jsonl(tmp_path / "case" / "Notes.jsonl", [{"text": "three"}])
    write_jsonl(tmp_path / "case" / "notes.jsonl", [{"text": "four"}])  # one folder on macOS/Windows disks
    for corpus, shard in (("slash", "a__b.jsonl"), ("case", "notes.jsonl")):
        job = OfflineJob(input=str(tmp_path / corpus), output=str(out), encoder=encoder_config, overwrite=True)
        with pytest.raises(ValueError, match=f"would share the shard name '{shard}'") as refused:
            embed_corpus(job)
        assert len([f for f in (tmp_path / corpus).rglob("*.jsonl") if str(f) in str(refused.value)]) == 2
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]


def test_jsonl_lines_split_on_newline_only(keyed, direct):
    data, errors, counts = keyed.part("newline")
    assert (counts["rows"], counts["errors"], errors.num_rows) == (4, 0, 0)
    got = {r["id"]: r for r in data.to_pylist()}
    assert set(got) == set(NEWLINE_TEXTS)
    for key, exp in zip(NEWLINE_TEXTS, direct.encode(list(NEWLINE_TEXTS.values())), strict=True):
        np.testing.assert_allclose(got[key]["dense"], exp.dense, atol=1e-5)
        assert got[key]["n_tokens"] == exp.n_tokens


def test_error_rows_say_file_row_and_id(keyed):
    data, errors, counts = keyed.part("errors")
    assert (counts["rows"], counts["errors"]) == (6, 8)
    assert sorted(data.column("id").to_pylist()) == ["bom", "last", "ok", "p0", "p1", "p3"]
    a, b, c = (str(keyed.root / "errors" / name) for name in ("a.jsonl", "b.csv", "c.parquet"))
    errors = {(r["file"], r["row"]): (r["id"], r["error"]) for r in errors.to_pylist()}
    assert errors == {
        (a, 4): (None, "line is not a JSON object"),
        (a, 6): ("null", "null text"),
        (a, 7): (None, f"line is not valid UTF-8 (byte {BAD_UTF8.index(0xE9) + 1})"),
        (a, 8): (None, "missing id field 'doc_id'"),
        (b, 1): ("c1", "missing field 'text'"),
        (b, 2): ("c2", "missing field 'text'"),
        (c, 3): ("p2", "null text"),
        (c, 5): ("p4", "null text"),
    }


def test_rows_reach_the_writer_block_by_block(numbered):
    """The job streams: the writer files rows while later blocks are still being read and encoded, and the
    progress callback sees each block arrive (a run that materialized the corpus would report once)."""
    data, _, counts = numbered.part("stream")
    assert counts["rows"] == data.num_rows == 600
    before = sum(c["rows"] for s, c in numbered.shards.items() if s < "stream__s.jsonl")  # shards filed earlier
    assert before == 30 and numbered.summary.rows == before + 600
    done = [rows for rows, _ in numbered.seen]
    assert done == sorted(done) and done[-1] == before + 600
    assert len({d for d in done if before < d < before + 600}) > 3  # while the 600-row shard was being filed
    assert numbered.seen[-1][1] == before + 600  # the total, once the files were counted (exact once done)
