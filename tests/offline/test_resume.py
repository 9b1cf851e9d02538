"""Resuming the offline job: done shards are skipped and interrupted ones redone, each row written once; an
output of another job (another model identity or output shape) is refused, before any work where the
settings tell; settings that change no vector never block a resume; manifests of earlier versions resume."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serve_app.core.config import Instructions
from serve_app.core.identity import ModelIdentity
from serve_app.offline import OfflineJob, Summary, embed_corpus
from serve_app.offline.manifest import Manifest
from serve_app.offline.pipeline import read_output
from tests.offline.corpora import manifest, two_files, write_jsonl


@pytest.fixture(scope="module", autouse=True)
def _ray(local_ray) -> None:
    """Ray Data jobs on the suite's local Ray."""


def old_format(job: OfflineJob, identity: ModelIdentity, instruction: str | None = None) -> dict:
    """`job`'s identity as versions before `ModelIdentity` recorded it: the revision as `model_revision`, the
    instruction used (only when there was one) as `instruction`."""
    old = {"model_revision": identity.revision, "dtype": identity.dtype, "max_length": identity.max_length,
           "normalize_dense": identity.normalize_dense, "colbert": job.colbert, "text_field": job.text_field,
           "id_field": job.id_field}
    return {**old, "instruction": instruction} if instruction else old


@dataclass
class Restart:
    """What the runs of `restarted` did, and the output at each step."""

    job: OfflineJob
    first: Summary
    after_first: dict  # the manifest
    stale_shard_left: bool  # the earlier output's shard part2, after the first run
    second: Summary
    after_second: dict
    third: Summary
    done_mtimes: tuple[list[int], list[int]]  # shard part0's files after the first and the second run
    identity: dict  # the job's identity in today's format
    on_workers: str  # the dtype the workers resolve `auto` to
    other: str  # the one the driver would have resolved it to


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, encoder_config, direct) -> Restart:
    """One job over three files (7 rows each) with dtype `auto`, run three times while the driver's CPU is made
    to look unlike the workers' (resolving `auto` in the driver would record the other dtype): over an earlier
    finished output with `overwrite` and `max_shards=1`; again, after its manifest was rewritten as versions
    before ModelIdentity wrote it and with the debris of a run killed in the middle of shard part1; and once
    more. Read-only for the tests: the runs of those that use its output find every shard done."""
    from serve_app.core import device

    on_workers = device.dtype_name(device.resolve_dtype("auto", device.resolve_device("cpu")))
    other = "bf16" if on_workers == "fp32" else "fp32"
    model = direct.identity.model_copy(update={"dtype": on_workers})  # what the actors run
    root = tmp_path_factory.mktemp("restart")
    for f in range(3):
        write_jsonl(root / "in" / f"part{f}.jsonl", [{"id": f"{f}-{i}", "text": f"file {f} row {i}"} for i in range(7)])
    out = root / "out"
    auto = encoder_config.model_copy(update={"dtype": "auto"})
    job = OfflineJob(input=str(root / "in"), output=str(out), encoder=auto, id_field="id", max_shards=1)
    # The folder holds this job's finished output (every shard recorded): --overwrite starts afresh.
    (out / "data" / "part2.jsonl").mkdir(parents=True)
    (out / "data" / "part2.jsonl" / "old.parquet").write_text("an earlier run's rows")
    earlier = Manifest(out, job.identity(model))
    for f in range(3):
        earlier.mark_done(f"part{f}.jsonl", {"rows": 7})

    def mtimes() -> list[int]:
        return [p.stat().st_mtime_ns for p in sorted((out / "data" / "part0.jsonl").iterdir())]

    resumed = job.model_copy(update={"max_shards": None})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device, "cpu_has_fast_bf16", lambda: on_workers == "fp32")
        assert device.dtype_name(device.resolve_dtype("auto", device.resolve_device("cpu"))) == other
        first = embed_corpus(job.model_copy(update={"overwrite": True}))
        after_first = manifest(out)
        stale_shard_left = (out / "data" / "part2.jsonl").exists()
        done_before = mtimes()
        (out / "_manifest.json").write_text(json.dumps({**after_first, "job": old_format(job, model)}))
        (out / "_staging" / "part1.jsonl" / "data").mkdir(parents=True)
        (out / "data" / "part1.jsonl").mkdir()
        pq.write_table(pa.table({"id": ["1-0"]}), out / "data" / "part1.jsonl" / "partial.parquet")
        second = embed_corpus(resumed)
        after_second = manifest(out)
        third = embed_corpus(resumed)
    return Restart(job=resumed, first=first, after_first=after_first, stale_shard_left=stale_shard_left,
                   second=second, after_second=after_second, third=third, done_mtimes=(done_before, mtimes()),
                   identity=job.identity(model), on_workers=on_workers, other=other)


def test_overwrite_deletes_the_earlier_output_and_max_shards_stops_early(restarted):
    first = restarted.first
    assert (first.shards_done, first.shards_skipped, first.shards_pending, first.rows) == (1, 0, 2, 7)
    assert not restarted.stale_shard_left
    assert set(restarted.after_first["shards"]) == {"part0.jsonl"}


def test_resume_skips_done_shards_redoes_an_interrupted_one_and_writes_each_row_once(restarted):
    second = restarted.second
    assert (second.shards_done, second.shards_skipped, second.shards_pending, second.rows) == (2, 1, 0, 14)
    ids = read_output(restarted.job.output).column("id").to_pylist()  # the partial part1 file would repeat 1-0
    assert sorted(ids) == sorted(f"{f}-{i}" for f in range(3) for i in range(7))
    before, after = restarted.done_mtimes
    assert before and after == before  # the done shard was not rewritten
    assert not (Path(restarted.job.output) / "_staging" / "part1.jsonl").exists()


def test_a_manifest_written_before_model_identity_resumes_and_is_rewritten_in_todays_format(restarted):
    assert restarted.second.shards_skipped == 1  # its shard part0 was taken as done
    job = restarted.after_second["job"]
    assert job == restarted.identity and "model_revision" not in job and job["revision"]
    assert set(restarted.after_second["shards"]) == {"part0.jsonl", "part1.jsonl", "part2.jsonl"}


def test_a_finished_output_resumes_with_nothing_to_do(restarted):
    third = restarted.third
    assert (third.shards_done, third.shards_skipped, third.shards_pending, third.rows) == (0, 3, 0, 0)


@pytest.mark.parametrize(("change", "difference"), [
    ({"encoder": {"max_length": 32}}, "max_length: 64 there, 32 now"),
    ({"encoder": {"dtype": "bf16"}}, "dtype: 'fp32' there, 'bf16' now"),
    ({"encoder": {"normalize_dense": False}}, "normalize_dense: True there, False now"),
    ({"colbert": True}, "colbert: False there, True now"),
    ({"id_field": "doc_id"}, "id_field: None there, 'doc_id' now"),
    ({"input_type": "query", "encoder": {"instructions": Instructions(query="q: ")}},
     "instructions.query: None there, 'q: ' now"),
], ids=["max_length", "dtype", "normalize_dense", "colbert", "id_field", "instruction"])
def test_resume_with_settings_that_change_vectors_is_refused_before_the_model_loads(tmp_path, encoder_config, direct,
                                                                                   change, difference):
    job = OfflineJob(input=str(two_files(tmp_path)), output=str(tmp_path / "out"), encoder=encoder_config)
    (tmp_path / "out").mkdir()
    Manifest(tmp_path / "out", job.identity(direct.identity)).mark_done("part0.jsonl", {"rows": 3})
    # No model at this path: a run that got as far as loading one would fail with another error.
    encoder = encoder_config.model_copy(update={**change.get("encoder", {}), "model": str(tmp_path / "no-model")})
    other = job.model_copy(update={**change, "encoder": encoder})
    with pytest.raises(ValueError, match=f"different job \\({re.escape(difference)}\\)"):
        embed_corpus(other)
    assert not (tmp_path / "out" / "data").exists()


def test_job_identity_keeps_only_the_instruction_of_its_input_type(direct):
    plain = OfflineJob(input="in", output="out")
    model = direct.identity
    assert model.instructions == Instructions()
    both = model.model_copy(update={"instructions": Instructions(query="q: ", passage="p: ")})
    assert plain.identity(both) == plain.identity(model)  # without an input type no instruction is used
    query = plain.model_copy(update={"input_type": "query"})
    assert query.identity(both)["instructions"] == {"query": "q: ", "passage": None}
    assert query.identity(both) == query.identity(model.model_copy(update={"instructions": Instructions(query="q: ")}))
    assert query.identity(both) != query.identity(model)


def test_job_identity_is_the_model_identity_and_the_output_fields(direct):
    job = OfflineJob(input="in", output="out")
    assert job.identity(direct.identity) == {**direct.identity.model_dump(), "colbert": False, "text_field": "text",
                                             "id_field": None}
    assert job.model_copy(update={"ids_field": "ids"}).identity(direct.identity)["ids_field"] == "ids"
    assert job.model_copy(update={"milvus_uri": "m.db"}).identity(direct.identity)["text"] is True


def test_an_identity_recorded_before_model_identity_reads_as_todays(direct):
    job = OfflineJob(input="in", output="out", id_field="id")
    assert job.upgraded(old_format(job, direct.identity)) == job.identity(direct.identity)
    query = job.model_copy(update={"input_type": "query"})
    instructed = direct.identity.model_copy(update={"instructions": Instructions(query="q: ")})
    assert query.upgraded(old_format(query, direct.identity, "q: ")) == query.identity(instructed)
    assert query.upgraded(old_format(query, direct.identity)) != query.identity(instructed)


def test_resume_ignores_settings_that_do_not_change_vectors(restarted):
    job = restarted.job
    # Instructions change no vector of a job without an input type.
    runtime_only = job.encoder.model_copy(update={
        "num_threads": 1, "device": "auto", "max_forward_tokens": 96, "max_batch_size": 2, "min_length_ratio": 0.0,
        "instructions": Instructions(query="q: ", passage="p: ")})
    # Every shard is done: the resumed run checks the folder's job and skips them without starting the pipeline.
    resumed = embed_corpus(job.model_copy(update={"encoder": runtime_only, "batch_size": 2, "batch_bytes": 4096,
                                                  "concurrency": 2, "num_cpus": 1.0}))
    assert (resumed.shards_done, resumed.shards_skipped, resumed.rows) == (0, 3, 0)


def test_resume_identity_holds_the_dtype_and_revision_the_actors_resolve(restarted, tmp_path, encoder_config,
                                                                         direct, monkeypatch):
    from serve_app.core import device

    job, on_workers, other = restarted.job, restarted.on_workers, restarted.other
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: on_workers == "fp32")  # as while it ran
    state = manifest(job.output)
    assert (state["job"]["dtype"], state["job"]["revision"]) == (on_workers, direct.revision)
    explicit = job.model_copy(update={"encoder": encoder_config.model_copy(update={"dtype": on_workers})})
    assert embed_corpus(explicit).shards_skipped == 3  # `auto` was recorded as what it resolved to
    with pytest.raises(ValueError, match=f"dtype: '{on_workers}' there, '{other}' now"):
        embed_corpus(job.model_copy(update={"encoder": encoder_config.model_copy(update={"dtype": other})}))
    # Output made where `auto` resolved to the other dtype (a copy of the shared one): its vectors must not be
    # mixed with these.
    shutil.copytree(job.output, tmp_path / "out")
    (tmp_path / "out" / "_manifest.json").write_text(json.dumps({**state, "job": {**state["job"], "dtype": other}}))
    with pytest.raises(ValueError, match=f"dtype: '{other}' there, '{on_workers}' now"):
        embed_corpus(job.model_copy(update={"output": str(tmp_path / "out")}))
