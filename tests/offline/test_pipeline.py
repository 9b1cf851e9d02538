"""The offline Ray Data job end to end on the small checkpoint: values, errors, restart, schema."""

from __future__ import annotations

import json
import os
import shutil
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

from serve_app.offline import OfflineJob, embed_corpus
from serve_app.offline.inputs import find_inputs
from serve_app.offline.pipeline import read_output

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _ray(local_ray) -> None:
    """Every test here runs Ray Data jobs on the suite's local Ray."""


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))


class Run:
    """One job's finished output, shared read-only by the tests that check a part of it: each test wrote its own
    input folder under `root` and reads back its shards (`part`), so one Ray Data job (~10-15 s of actor
    start-up) serves several tests."""

    def __init__(self, root: Path, job: OfflineJob, on_progress=None):
        self.root, self.job, self.summary = root, job, embed_corpus(job, on_progress=on_progress)
        self.seen: list[tuple[int, int | None]] = []
        self.out = Path(job.output)
        self.shards = json.loads((self.out / "_manifest.json").read_text())["shards"]

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


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, encoder_config, mixed_texts) -> Run:
    """One job with an id field and ColBERT vectors over the inputs of several tests, one folder each."""
    root = tmp_path_factory.mktemp("keyed")
    mixed_corpus(root / "mixed", mixed_texts)
    newline_corpus(root / "newline")
    error_corpus(root / "errors")
    return Run(root, OfflineJob(input=str(root), output=str(root.parent / f"{root.name}-out"),
                                encoder=encoder_config, id_field="doc_id", colbert=True, batch_size=4))


NUMBERED = [f"line {i} 東京 " + "word " * (i % 9) for i in range(25)]
STREAMED = [f"streamed row {i} " + "word " * (i % 7) for i in range(600)]
GLOB_TEXTS = {"en": ["the river museum", "a quiet library"], "ja": ["東京の図書館", "川の博物館", "駅の近く"]}


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, encoder_config) -> Run:
    """One job without an id field, over a glob (`root/*/*.jsonl`) of the inputs of several tests, in small
    blocks (`batch_bytes` 1 KiB), with the progress it reported (`seen`: rows done, total)."""
    root = tmp_path_factory.mktemp("numbered")
    write_jsonl(root / "lines" / "c.jsonl", [{"text": t} for t in NUMBERED])
    for folder, rows in GLOB_TEXTS.items():  # the same file name in two folders
        write_jsonl(root / folder / "part-0.jsonl", [{"text": t} for t in rows])
    write_jsonl(root / "stream" / "s.jsonl", [{"text": t} for t in STREAMED])  # the last shard
    job = OfflineJob(input=str(root / "*" / "*.jsonl"), output=str(root.parent / f"{root.name}-out"),
                     encoder=encoder_config, batch_bytes=1024)
    seen: list[tuple[int, int | None]] = []
    run = Run(root, job, on_progress=lambda p: seen.append((p.rows, p.total)))
    run.seen = seen
    return run


def by_id(table: pa.Table) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    for row in table.to_pylist():
        rows[row["id"]].append(row)
    return rows


def test_mixed_corpus_end_to_end(keyed, direct, mixed_texts):
    data, errors, counts = keyed.part("mixed")
    expected_texts = {f"a{i}": [t] for i, t in enumerate(mixed_texts)}
    expected_texts.update({"p0": ["パーケットの文章です"], "p1": [""], "dup": ["first copy", "second copy 東京"]})
    assert counts["rows"] == data.num_rows == sum(len(v) for v in expected_texts.values())
    assert counts["errors"] == errors.num_rows == 6
    got = by_id(data)
    assert set(got) == set(expected_texts)
    for doc_id, texts in expected_texts.items():
        expected = direct.encode(texts, colbert=True)
        rows = sorted(got[doc_id], key=lambda r: r["dense"][0])
        expected = sorted(expected, key=lambda e: e.dense[0])
        assert len(rows) == len(expected)
        for row, exp in zip(rows, expected):
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
    # The job's summary counts what it wrote, over all its shards (the other tests' folders too).
    summary, out = keyed.summary, keyed.job.output
    all_data, all_errors = read_output(out), read_output(out, "errors")
    assert (summary.rows, summary.errors) == (all_data.num_rows, all_errors.num_rows)
    assert summary.tokens == sum(all_data.column("n_tokens").to_pylist())
    assert (summary.shards_done, summary.shards_skipped, summary.shards_pending) == (len(keyed.shards), 0, 0)


def test_row_numbers_are_ids_without_an_id_field(numbered, direct):
    data, _, _ = numbered.part("lines")
    got = {r["id"]: r["dense"] for r in data.to_pylist()}
    assert set(got) == {f"lines__c.jsonl:{i}" for i in range(25)}
    for i, exp in enumerate(direct.encode(NUMBERED)):
        np.testing.assert_allclose(got[f"lines__c.jsonl:{i}"], exp.dense, atol=1e-5)


def test_restart_skips_done_shards_and_loses_nothing(tmp_path, encoder_config, direct):
    from serve_app.offline.manifest import Manifest

    corpus = tmp_path / "in"
    corpus.mkdir()
    for f in range(3):
        write_jsonl(corpus / f"part{f}.jsonl", [{"id": f"{f}-{i}", "text": f"file {f} row {i}"} for i in range(7)])
    job = OfflineJob(input=str(corpus), output=str(tmp_path / "out"), encoder=encoder_config, id_field="id",
                     max_shards=1)
    # The folder holds this job's finished output (every shard recorded): --overwrite starts afresh.
    (tmp_path / "out" / "data" / "part2.jsonl").mkdir(parents=True)
    (tmp_path / "out" / "data" / "part2.jsonl" / "old.parquet").write_text("an earlier run's rows")
    earlier = Manifest(tmp_path / "out", job.identity(revision=direct.revision, dtype="fp32"))
    for f in range(3):
        earlier.mark_done(f"part{f}.jsonl", {"rows": 7})
    first = embed_corpus(job.model_copy(update={"overwrite": True}))
    assert (first.shards_done, first.shards_skipped, first.shards_pending, first.rows) == (1, 0, 2, 7)
    assert not (tmp_path / "out" / "data" / "part2.jsonl").exists()
    assert set(json.loads((tmp_path / "out" / "_manifest.json").read_text())["shards"]) == {"part0.jsonl"}
    done_files = sorted((tmp_path / "out" / "data" / "part0.jsonl").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in done_files]
    # Debris of a run killed in the middle of shard part1: half-written staging and data folders.
    (tmp_path / "out" / "_staging" / "part1.jsonl" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "part1.jsonl").mkdir()
    pq.write_table(pa.table({"id": ["1-0"]}), tmp_path / "out" / "data" / "part1.jsonl" / "partial.parquet")
    second = embed_corpus(job.model_copy(update={"max_shards": None}))
    assert (second.shards_done, second.shards_skipped, second.rows) == (2, 1, 14)
    ids = read_output(job.output).column("id").to_pylist()
    assert sorted(ids) == sorted(f"{f}-{i}" for f in range(3) for i in range(7))
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "out" / "data" / "part0.jsonl").iterdir())] == mtimes
    third = embed_corpus(job.model_copy(update={"max_shards": None}))
    assert (third.shards_done, third.shards_skipped) == (0, 3)
    with pytest.raises(ValueError, match="different job"):
        embed_corpus(job.model_copy(update={"colbert": True}))


def test_parquet_schema_is_plain_arrow(keyed, direct):
    files = [f for f in (keyed.out / "data").rglob("*.parquet") if f.is_file()]  # not the folder b.parquet
    schema = pq.read_schema(files[0])
    dim = direct.dim
    assert schema.field("id").type == pa.string()
    assert schema.field("dense").type == pa.list_(pa.float32(), dim)
    assert schema.field("sparse_indices").type == pa.list_(pa.int32())
    assert schema.field("sparse_values").type == pa.list_(pa.float32())
    assert schema.field("colbert").type == pa.list_(pa.list_(pa.float32(), dim))
    assert schema.field("n_tokens").type == pa.int32() and schema.field("truncated").type == pa.bool_()
    assert not any(isinstance(f.type, pa.ExtensionType) for f in schema)
    frame = pq.read_table(files[0]).to_pandas()  # readable without Ray
    assert len(frame["dense"][0]) == dim


def test_cli_embeds_the_shipped_sample(tmp_path, tiny_model_dir):
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join((ROOT / "examples" / "corpus.jsonl").read_text().splitlines(True)[:40]))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # join this module's Ray
    out = subprocess.run([sys.executable, "-m", "serve_app.offline", "--input", str(sample), "--output",
                          str(tmp_path / "out"), "--model", tiny_model_dir, "--id-field", "doc_id"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: rows=40 " in out.stdout and "errors=0" in out.stdout
    assert read_output(str(tmp_path / "out")).num_rows == 40


def test_shard_names_are_paths_relative_to_the_input_root(tmp_path):
    for folder in ("en", "ja"):
        (tmp_path / "corpus" / folder).mkdir(parents=True)
        write_jsonl(tmp_path / "corpus" / folder / "part-0.jsonl", [{"text": folder}])
    corpus = tmp_path / "corpus"
    both = [(corpus / folder / "part-0.jsonl", f"{folder}__part-0.jsonl") for folder in ("en", "ja")]
    for pattern in (corpus / "*" / "*.jsonl", corpus / "**" / "*.jsonl", corpus / "*", corpus):
        assert [tuple(f) for f in find_inputs(str(pattern))] == both, pattern
    # Up to the first wildcard: a wildcard in the file name leaves the folder as the root.
    assert [tuple(f) for f in find_inputs(str(corpus / "en" / "part-*.jsonl"))] == [(both[0][0], "part-0.jsonl")]
    assert [tuple(f) for f in find_inputs(str(corpus / "ja" / "part-0.jsonl"))] == [(both[1][0], "part-0.jsonl")]


def test_glob_embeds_same_named_files_of_different_folders(numbered, direct):
    assert numbered.job.input == str(numbered.root / "*" / "*.jsonl")
    shards = {s: (c["rows"], c["errors"]) for s, c in numbered.shards.items() if s.endswith("part-0.jsonl")}
    assert shards == {"en__part-0.jsonl": (2, 0), "ja__part-0.jsonl": (3, 0)}
    assert (numbered.summary.shards_done, numbered.summary.shards_skipped) == (4, 0)  # with lines/, stream/
    got = {r["id"]: r["dense"] for folder in GLOB_TEXTS for r in numbered.part(folder)[0].to_pylist()}
    expected = {f"{folder}__part-0.jsonl:{i}": t for folder, rows in GLOB_TEXTS.items() for i, t in enumerate(rows)}
    assert set(got) == set(expected)
    for key, exp in zip(expected, direct.encode(list(expected.values()))):
        np.testing.assert_allclose(got[key], exp.dense, atol=1e-5)


def test_inputs_sharing_a_shard_name_are_refused_before_any_work(tmp_path, encoder_config):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier run's output, which --overwrite would delete")
    (tmp_path / "slash" / "a").mkdir(parents=True)
    write_jsonl(tmp_path / "slash" / "a" / "b.jsonl", [{"text": "one"}])
    write_jsonl(tmp_path / "slash" / "a__b.jsonl", [{"text": "two"}])
    (tmp_path / "case").mkdir()
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
    for key, exp in zip(NEWLINE_TEXTS, direct.encode(list(NEWLINE_TEXTS.values()))):
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


def two_files(tmp_path) -> Path:
    corpus = tmp_path / "in"
    corpus.mkdir()
    for f in range(2):
        write_jsonl(corpus / f"part{f}.jsonl", [{"text": f"file {f} row {i}"} for i in range(3)])
    return corpus


@pytest.fixture(scope="module")
def auto_done(tmp_path_factory, encoder_config) -> tuple[OfflineJob, str, str]:
    """A finished job over two files with dtype `auto`, run while the driver's CPU was made to look unlike the
    workers' (resolving `auto` in the driver would record the other dtype); the job, the dtype the workers
    resolve `auto` to, and the other one. Read-only: the runs of the tests that use it find every shard done."""
    from serve_app.core import device

    on_workers = device.dtype_name(device.resolve_dtype("auto", device.resolve_device("cpu")))
    other = "bf16" if on_workers == "fp32" else "fp32"
    root = tmp_path_factory.mktemp("auto-done")
    job = OfflineJob(input=str(two_files(root)), output=str(root / "out"),
                     encoder=encoder_config.model_copy(update={"dtype": "auto"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device, "cpu_has_fast_bf16", lambda: on_workers == "fp32")
        assert device.dtype_name(device.resolve_dtype("auto", device.resolve_device("cpu"))) == other
        assert embed_corpus(job).shards_done == 2
    return job, on_workers, other


def test_resume_ignores_settings_that_do_not_change_vectors(auto_done):
    job = auto_done[0]
    runtime_only = job.encoder.model_copy(update={"num_threads": 1, "device": "auto", "max_forward_tokens": 96,
                                                  "max_batch_size": 2, "min_length_ratio": 0.0})
    # Every shard is done: the resumed run checks the folder's job and skips them without starting the pipeline.
    resumed = embed_corpus(job.model_copy(update={"encoder": runtime_only, "batch_size": 2}))
    assert (resumed.shards_done, resumed.shards_skipped) == (0, 2)
    shorter = job.encoder.model_copy(update={"max_length": 32})
    with pytest.raises(ValueError, match="different job \\(max_length: 64 there, 32 now\\)"):
        embed_corpus(job.model_copy(update={"encoder": shorter}))


def test_resume_with_settings_that_change_vectors_is_refused_before_the_model_loads(tmp_path, encoder_config):
    from serve_app.offline.manifest import Manifest

    job = OfflineJob(input=str(two_files(tmp_path)), output=str(tmp_path / "out"), encoder=encoder_config)
    (tmp_path / "out").mkdir()
    Manifest(tmp_path / "out", job.identity(revision="r1", dtype="fp32")).mark_done("part0.jsonl", {"rows": 3})
    # No model at this path: a run that got as far as loading one would fail with another error.
    other = encoder_config.model_copy(update={"max_length": 32, "model": str(tmp_path / "no-such-model")})
    with pytest.raises(ValueError, match="different job \\(max_length: 64 there, 32 now\\)"):
        embed_corpus(job.model_copy(update={"encoder": other}))
    assert not (tmp_path / "out" / "data").exists()


def test_resume_identity_holds_the_dtype_and_revision_the_actors_resolve(auto_done, tmp_path, encoder_config,
                                                                         direct, monkeypatch):
    from serve_app.core import device

    job, on_workers, other = auto_done  # run while resolving `auto` in the driver would have given `other`
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: on_workers == "fp32")  # and still here
    state = json.loads((Path(job.output) / "_manifest.json").read_text())
    assert (state["job"]["dtype"], state["job"]["model_revision"]) == (on_workers, direct.revision)
    explicit = job.model_copy(update={"encoder": encoder_config.model_copy(update={"dtype": on_workers})})
    assert embed_corpus(explicit).shards_skipped == 2  # `auto` was recorded as what it resolved to
    with pytest.raises(ValueError, match=f"dtype: '{on_workers}' there, '{other}' now"):
        embed_corpus(job.model_copy(update={"encoder": encoder_config.model_copy(update={"dtype": other})}))
    # Output made where `auto` resolved to the other dtype (a copy of the shared one): its vectors must not be
    # mixed with these.
    shutil.copytree(job.output, tmp_path / "out")
    (tmp_path / "out" / "_manifest.json").write_text(json.dumps({**state, "job": {**state["job"], "dtype": other}}))
    with pytest.raises(ValueError, match=f"dtype: '{other}' there, '{on_workers}' now"):
        embed_corpus(job.model_copy(update={"output": str(tmp_path / "out")}))


def test_blocks_encoded_with_other_weights_or_dtype_are_refused(encoder_config, direct):
    from serve_app.offline.actor import EncodeBatch
    from serve_app.offline.pipeline import check_resolution

    block = EncodeBatch(encoder_config)(pa.table({"id": ["a", "b"], "text": ["東京 library", "river bank"]}))
    ours = {"revision": direct.revision, "dtype": direct.describe()["dtype"]}
    check_resolution(block, ours)  # the actor says what it runs, on every block
    with pytest.raises(RuntimeError, match="every node must load the same checkpoint, in the same dtype"):
        check_resolution(block, {**ours, "revision": "local-0"})
    with pytest.raises(RuntimeError, match="same dtype"):
        check_resolution(block, {**ours, "dtype": "bf16" if ours["dtype"] != "bf16" else "fp32"})


def test_actor_with_a_cache_answers_known_texts_without_the_model(encoder_config):
    from serve_app.core.cache import CacheConfig
    from serve_app.offline.actor import EncodeBatch

    actor = EncodeBatch(encoder_config, cache=CacheConfig(backend="memory"))
    table = pa.table({"id": ["a", "b"], "text": ["東京 library", "river bank"]})
    first = actor(table)

    def model_must_not_run(batch):
        raise AssertionError("the model ran for a cached text")

    actor._encoder.forward = model_must_not_run
    assert actor(table).equals(first)


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


def test_actor_cpus_default_to_the_node_shared_by_the_actors(tmp_path, encoder_config):
    from serve_app.offline.pipeline import actor_cpus

    job = OfflineJob(input="in", output="out", encoder=encoder_config)
    assert actor_cpus(job) == 4.0  # this module's Ray has 4 CPUs: torch gets a thread per core
    assert actor_cpus(job.model_copy(update={"concurrency": 2})) == 2.0
    assert actor_cpus(job.model_copy(update={"num_gpus": 0.5})) == 1.0
    assert actor_cpus(job.model_copy(update={"num_cpus": 1.5})) == 1.5
