"""The offline job: input files -> `map_batches(EncodeBatch)` actor pool -> parquet (and Milvus), restartable.

Each input file is a shard, named by its path relative to the input root (`inputs.find_inputs`). A run
skips the shards its output's manifest records as complete and redoes any other (`shards.Shards` commits
each as its rows end), so the output holds each input row exactly once; a run into an output of another
job (`job.OfflineJob.identity`) is refused, before any work where the settings tell, else before anything
is written. `embed_corpus` only puts the parts together: find the inputs, check the output, start Ray,
stream the encoded blocks (`dataset`) into the shards, sum up.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ..core.identity import ModelIdentity
from .actor import block_identities, resolve_encoder
from .dataset import data_context, encoded_batches
from .inputs import FORMATS, InputFile, find_inputs
from .job import OfflineJob, Summary
from .manifest import Manifest, recorded_job, recorded_shards, refuse_other_job
from .progress import Progress, ProgressCallback
from .shards import Shards, catch_up, open_sink
from .via_serve import app_identity

UNRESOLVED = ("revision", "dtype")  # identity keys only the actors can tell (the dtype: when it is `auto`)


def _inputs(job: OfflineJob) -> list[InputFile]:
    """The job's input files; refuses bad inputs before anything is deleted or written."""
    files = find_inputs(job.input)
    if job.ids_field is not None and (csv := [f.path for f in files if FORMATS[f.path.suffix.lower()] == "csv"]):
        raise ValueError(f"{csv[0]}: token ids (ids_field) are read from JSONL or parquet; CSV has no lists")
    return files


def _refuse_other_job_early(job: OfflineJob, out: Path, app: ModelIdentity | None = None) -> None:
    """Refuse an output of another job before any work, on every identity field known before the actors say:
    all but the revision, and the dtype when it is `auto` (an explicit one is what the actors run). With
    `serve_app`, `app` is the whole identity its replicas report: every field is checked."""
    recorded = None if job.overwrite else recorded_job(out)
    if recorded is not None:
        auto = job.encoder.dtype == "auto"
        known = app or ModelIdentity.of(job.encoder, revision="", dtype="" if auto else job.encoder.dtype)
        unknown = () if app is not None else UNRESOLVED if auto else UNRESOLVED[:1]
        refuse_other_job(out, job.upgraded(recorded), job.identity(known), unknown=unknown)


def _resolved(job: OfflineJob, first: pa.Table | None, app: ModelIdentity | None = None) -> ModelIdentity:
    """The identity of the encoders the job runs: as the actors report it with every block (the driver may
    have no GPU, or another CPU, and resolve `auto` differently), or, when nothing is encoded, as a task with
    the actors' resources resolves it (with `serve_app`: as the app's replicas report it)."""
    if first is not None:
        return block_identities(first)[0]
    if app is not None:
        return app
    task = ray.remote(resolve_encoder).options(num_cpus=0, num_gpus=job.num_gpus)
    return ray.get(task.remote(job.encoder))


def _ray_address(job: OfflineJob) -> str:
    """Where the job runs: `job.address`, else RAY_ADDRESS, else `local`, a Ray started for this job alone
    (never one another process left running on the host). With `serve_app`, `auto`: the running cluster
    where the app runs (a Ray of its own holds no app)."""
    return job.address or os.environ.get("RAY_ADDRESS") or ("auto" if job.serve_app is not None else "local")


def _start_ray(job: OfflineJob) -> None:
    """Connect to the job's Ray (`_ray_address`), or start it, unless Ray is up already. A Ray of its own has no
    dashboard (the progress line tells what it would)."""
    if not ray.is_initialized():
        options = {} if job.serve_app is not None else {"include_dashboard": False}  # ignored when joining
        ray.init(address=_ray_address(job), log_to_driver=False, **options)


def embed_corpus(job: OfflineJob, on_progress: ProgressCallback | None = None) -> Summary:
    """Embed every input row not yet embedded into `job.output`; returns this run's summary.

    `on_progress` is called with the run's `Progress` as rows are filed (e.g. `progress.Printer()`).
    """
    started = time.monotonic()
    out = Path(job.output)
    files = _inputs(job)
    app = None
    if job.serve_app is None:
        _refuse_other_job_early(job, out)
    _start_ray(job)
    if job.serve_app is not None:  # what the app's replicas run, before any request: a resume must match it all
        app = app_identity(job.serve_app)
        _refuse_other_job_early(job, out, app[0])
    done = set() if job.overwrite else recorded_shards(out)
    new = [file for file in files if file.shard not in done]
    todo = new[:job.max_shards] if job.max_shards is not None else new
    summary = Summary(shards_pending=len(new) - len(todo), shards_skipped=len(files) - len(new))
    progress = Progress(todo)  # from now: the rates count the start-up a user waits for
    with data_context(job):
        # Only blocks with rows: the first one's says what the actors run.
        batches = (batch for batch in (encoded_batches(job, todo, app) if todo else ()) if batch.num_rows)
        first = next(batches, None)  # starts the pipeline: reading, and the actors loading the model
        identity = _resolved(job, first, app and app[0])
        # Nothing is written before the output folder is known to hold this job's output (or none).
        if job.overwrite:
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(out, job.identity(identity), upgrade=job.upgraded)
        sink = open_sink(job)
        try:
            if sink is not None:
                summary.milvus_rows = sum(catch_up(manifest, file.shard, sink) for file in files if file.shard in done)
            if todo:
                shards = Shards(job, todo, manifest, identity, sink, summary, progress, on_progress)
                for batch in itertools.chain([] if first is None else [first], batches):
                    shards.add(batch)
                shards.close()
        finally:
            if sink is not None:
                sink.close()
    summary.wall_s = time.monotonic() - started
    return summary


def read_output(output: str, kind: str = "data") -> pa.Table:
    """All rows of a finished job's `data` (embeddings) or `errors`, as one Arrow table."""
    path = Path(output) / kind
    return pq.read_table(path) if path.exists() else pa.table({})
