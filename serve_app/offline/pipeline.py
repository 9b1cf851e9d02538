"""The offline job: input files -> `map_batches(EncodeBatch)` actor pool -> parquet, restartable.

Each input file is a shard, named by its path relative to the input root (`inputs.find_inputs`). A
shard is written to `_staging/` and moved into `data/<shard>/` and `errors/<shard>/` (id, reason, file,
row) only when complete, then recorded in `_manifest.json`; a re-run with the same identity (weights,
resolved dtype, max_length, normalization, outputs) skips recorded shards and redoes any other, so the
output holds each input row exactly once. With `milvus_uri`, each
shard is also upserted into Milvus (`milvus_sink.py`) before it is recorded, so a crash in between only
upserts it again.
"""

from __future__ import annotations

import itertools
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig, InputType
from .actor import EncodeBatch, resolution, resolve_encoder
from .inputs import FORMATS, InputFile, find_inputs
from .manifest import Manifest, recorded_job, recorded_shards, refuse_other_job
from .progress import Progress, ProgressCallback
from .readers import CorpusSource
from .writer import ShardWriter

if TYPE_CHECKING:
    from .milvus_sink import MilvusSink

READERS = 2  # input files read at a time
RESOLVED = ("model_revision", "dtype")  # identity keys known only once the actors (or `resolve_encoder`) say
PREFETCH = 0  # batches fetched ahead: any more and Ray Data holds back the first until that many are out


class OfflineJob(BaseModel):
    """Everything one offline run needs; also what a resumed run must match."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    encoder: EncoderConfig = EncoderConfig()
    text_field: str = "text"
    ids_field: str | None = Field(None, description="instead of text_field: the field holding each row's token ids "
                                  "(a JSON array or parquet list of integers, as `/tokenize` returns them: special "
                                  "tokens included; no instruction is added)")
    id_field: str | None = None
    input_type: InputType | None = Field(None, description="query or passage: encode every text after the "
                                         "encoder's instruction for that side (encoder.instructions)")
    colbert: bool = False
    concurrency: int = Field(1, ge=1, description="encoder actors")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractional shares a GPU")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per actor (torch runs a thread per CPU); default: "
                                   "1 with a GPU, else the largest node's CPUs shared by the actors")
    batch_bytes: int = Field(2 << 20, ge=1024, description="input bytes per encoder call (texts and ids, as Arrow): "
                             "about the same tokens per call whatever the texts' length; more packs texts by "
                             "length better and holds more memory (with --colbert: ~4 KiB of vectors per token)")
    batch_size: int | None = Field(None, ge=1, description="rows per encoder call instead of --batch-bytes")
    overwrite: bool = False
    max_shards: int | None = Field(None, ge=1, description="stop after this many new shards (partial runs)")
    address: str | None = Field(None, description="Ray cluster address; default: RAY_ADDRESS or a local Ray")
    milvus_uri: str | None = Field(None, description="also upsert into Milvus: a Milvus Lite `.db` file or "
                                                     "http://host:19530")
    milvus_collection: str = Field("bge_m3", description="Milvus collection, created when missing")
    cache: CacheConfig = Field(CacheConfig(backend="off"), description="embedding cache the actors consult and "
                               "fill, e.g. the online service's Redis (off by default)")

    @model_validator(mode="after")
    def _ids_have_no_text(self) -> OfflineJob:
        if self.ids_field is not None and self.milvus_uri is not None:
            raise ValueError("milvus_uri: the Milvus sink stores each row's text, and ids_field rows have none")
        return self

    def identity(self, revision: str, dtype: str) -> dict:
        """What makes the output what it is; a resumed run must match it.

        The vectors depend on the weights (the checkpoint `revision`), the `dtype` they run in (resolved,
        never `auto`: see `resolve_encoder`), `max_length`, normalization, which outputs are written, and
        the instruction put before each text (`input_type`: only then, so earlier outputs stay resumable);
        not on the device, threads or batching. With Milvus on, the parquet also holds the text (the sink's
        source), so that is part of it; where the rows go is not: a run into another URI or collection
        upserts the finished shards there too.
        """
        identity = {"model_revision": revision, "dtype": dtype, "max_length": self.encoder.max_length,
                    "normalize_dense": self.encoder.normalize_dense, "colbert": self.colbert,
                    "text_field": self.text_field, "id_field": self.id_field}
        if self.input_type is not None and (instruction := getattr(self.encoder.instructions, self.input_type)):
            identity["instruction"] = instruction
        if self.ids_field is not None:  # only then: earlier outputs stay resumable
            identity["ids_field"] = self.ids_field
        return {**identity, "text": True} if self.milvus_uri else identity


class Summary(BaseModel):
    """What a run did (this run only for rows/tokens/errors/wall time; shards counted overall)."""

    rows: int = 0
    tokens: int = 0
    errors: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_pending: int = 0
    wall_s: float = 0.0
    milvus_rows: int | None = None  # rows upserted into Milvus by this run; None without Milvus

    @property
    def rows_per_s(self) -> float:
        """Embedded rows per second of wall time."""
        return self.rows / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Tokens of embedded rows per second of wall time."""
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def line(self) -> str:
        """One human line for the CLI."""
        return (f"rows={self.rows} tokens={self.tokens} errors={self.errors} wall={self.wall_s:.1f}s "
                f"rows/s={self.rows_per_s:.1f} tokens/s={self.tokens_per_s:.0f} "
                f"shards: done={self.shards_done} skipped={self.shards_skipped} "
                f"pending={self.shards_pending}" + ("" if self.milvus_rows is None else f" milvus={self.milvus_rows}"))


@contextmanager
def _data_context(**settings):
    """Ray Data's current context with `settings` for this job's dataset (captured when it is made and used
    while it runs), restored afterwards: other datasets of the process keep theirs."""
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in settings}
    keep_order = context.execution_options.preserve_order
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        # Blocks leave the pool in input order: a shard is complete when the next one's rows arrive.
        context.execution_options.preserve_order = True
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        context.execution_options.preserve_order = keep_order


def actor_cpus(job: OfflineJob) -> float:
    """CPUs per encoder actor: `job.num_cpus`, else 1 with a GPU, else the largest node's CPUs shared by the
    actors (torch runs one thread per CPU Ray gives it: fewer would leave cores idle)."""
    if job.num_cpus is not None:
        return job.num_cpus
    if job.num_gpus:
        return 1.0
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    return float(max(1, int(node_cpus) // job.concurrency))


def _encoded(job: OfflineJob, files: list[InputFile], keep_text: bool, cpus: float):
    """The dataset of every row of `files`, encoded, in file order (build it inside `_data_context`)."""
    rows = ray.data.read_datasource(
        CorpusSource(files, job.ids_field or job.text_field, job.id_field, job.batch_bytes, job.ids_field is not None),
        # Reading and parsing are light next to the model, and must never wait behind an actor pool that
        # holds every CPU: no CPU reserved, at most READERS files open at a time. One read task per file,
        # its blocks streamed as they are parsed (Ray would otherwise split them after the fact).
        num_cpus=0, concurrency=min(READERS, len(files)), override_num_blocks=len(files))
    return rows.map_batches(
        EncodeBatch, fn_constructor_kwargs={"encoder_config": job.encoder, "colbert": job.colbert,
                                          "keep_text": keep_text, "cache": job.cache,
                                          "input_type": job.input_type},
        # One block (or `batch_size` rows) per call; one call queued per actor: the actor has nothing to
        # overlap with (the model holds its cores), and a queue would only delay the next block's writer.
        batch_size=job.batch_size, batch_format="pyarrow", zero_copy_batch=True, num_gpus=job.num_gpus or None,
        num_cpus=cpus, compute=ray.data.ActorPoolStrategy(size=job.concurrency, max_tasks_in_flight_per_actor=1))


class _Shards:
    """The shards of this run, filed in order as their rows arrive; each moved into place and recorded in
    the manifest as soon as the next one begins (or the job ends)."""

    def __init__(self, job: OfflineJob, files: list[InputFile], out: Path, manifest: Manifest, resolved: dict,
                 sink: MilvusSink | None, summary: Summary, progress: Progress, on_progress: ProgressCallback | None):
        self.job, self.files, self.out, self.manifest, self.sink = job, files, out, manifest, sink
        self.resolved = resolved
        self.summary, self.progress, self.on_progress = summary, progress, on_progress
        self.current = -1
        self.writer: ShardWriter | None = None
        for file in files:  # from an interrupted run: redo the whole shard
            for leftover in (self._staging(file), out / "data" / file.shard, out / "errors" / file.shard):
                shutil.rmtree(leftover, ignore_errors=True)

    def _staging(self, file: InputFile) -> Path:
        return self.out / "_staging" / file.shard

    def add(self, table: pa.Table) -> None:
        """File the encoded rows of `table` (ascending shards), finishing every shard before the first here."""
        if not table.num_rows:
            return
        check_resolution(table, self.resolved)
        shards = table.column("shard")
        bounds = pc.min_max(shards)
        first, last = bounds["min"].as_py(), bounds["max"].as_py()
        if first < self.current:  # never file rows into a shard already recorded as complete
            raise RuntimeError(f"rows of shard {self.files[first].shard!r} arrived after it was finished")
        for shard in range(first, last + 1):
            part = table if first == last else table.filter(pc.equal(shards, shard))
            if part.num_rows:
                self._advance(shard)
                assert self.writer is not None
                before = (self.writer.rows, self.writer.errors, self.writer.tokens)
                self.writer.add(part)
                self.progress.add(self.writer.rows - before[0], self.writer.errors - before[1],
                                  self.writer.tokens - before[2])
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _advance(self, shard: int) -> None:
        while self.current < shard:
            if self.current >= 0:
                self._finish()
            self.current += 1
            file = self.files[self.current]
            self.writer = ShardWriter(self._staging(file), str(file.path), self.job.colbert, self.sink is not None)

    def close(self) -> None:
        """Finish the last shard with rows and every shard after it (files without rows)."""
        self._advance(len(self.files) - 1)
        self._finish()
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _finish(self) -> None:
        file, writer = self.files[self.current], self.writer
        assert writer is not None
        writer.close()
        staging = self._staging(file)
        counts: dict = {"input": str(file.path), "rows": writer.rows, "tokens": writer.tokens, "errors": writer.errors}
        upserted = 0
        if self.sink is not None:  # before the shard is moved into place and recorded: a crash re-upserts it
            upserted = self.sink.upsert_parquet(staging / "data")
            counts["milvus"] = {**self.sink.target, "rows": upserted}
        for kind in ("data", "errors"):
            if (staging / kind).exists():
                (self.out / kind).mkdir(parents=True, exist_ok=True)
                (staging / kind).replace(self.out / kind / file.shard)
        shutil.rmtree(staging, ignore_errors=True)
        self.manifest.mark_done(file.shard, counts)
        self.progress.shard_done(self.current, writer.rows + writer.errors)
        self.summary.rows += writer.rows
        self.summary.tokens += writer.tokens
        self.summary.errors += writer.errors
        self.summary.shards_done += 1
        if self.sink is not None:
            self.summary.milvus_rows = (self.summary.milvus_rows or 0) + upserted


def check_resolution(table: pa.Table, expected: dict) -> None:
    """Refuse rows encoded with other weights or in another dtype than the job's (`RuntimeError`)."""
    got = resolution(table)
    if got != expected:
        raise RuntimeError(f"an encoder actor runs {got} where the job runs {expected}: every node must load the same "
                           "checkpoint, in the same dtype (set --dtype rather than auto on mixed hardware)")


def _sink(job: OfflineJob) -> MilvusSink | None:
    if not job.milvus_uri:
        return None
    from .milvus_sink import MilvusSink  # pymilvus is an optional extra

    return MilvusSink(job.milvus_uri, job.milvus_collection)


def _catch_up(manifest: Manifest, name: str, out: Path, sink: MilvusSink) -> int:
    """Upsert a shard finished earlier into another Milvus target into this one, from its parquet (no re-encoding)."""
    counts = manifest.counts(name)
    if {k: v for k, v in counts.get("milvus", {}).items() if k != "rows"} == sink.target:
        return 0
    rows = sink.upsert_parquet(out / "data" / name)
    manifest.mark_done(name, {**counts, "milvus": {**sink.target, "rows": rows}})
    return rows


def embed_corpus(job: OfflineJob, on_progress: ProgressCallback | None = None) -> Summary:
    """Embed every input row not yet embedded into `job.output`; returns this run's summary.

    `on_progress` is called with the run's `Progress` as rows are filed (e.g. `progress.Printer()`).
    """
    started = time.monotonic()
    out = Path(job.output)
    files = find_inputs(job.input)  # refuses bad inputs before anything is deleted or written
    if job.ids_field is not None and (csv := [f.path for f in files if FORMATS[f.path.suffix.lower()] == "csv"]):
        raise ValueError(f"{csv[0]}: token ids (ids_field) are read from JSONL or parquet; CSV has no lists")
    recorded = None if job.overwrite else recorded_job(out)
    if recorded is not None:  # refused before any work; the revision and dtype are checked once resolved
        refuse_other_job(out, recorded, job.identity(revision="", dtype=""), unknown=RESOLVED)
    if not ray.is_initialized():  # a Ray of the job's own: no dashboard (the progress line tells what it would)
        ray.init(address=job.address, log_to_driver=False, include_dashboard=False)
    cpus = actor_cpus(job)
    done = set() if job.overwrite else recorded_shards(out)
    new = [file for file in files if file.shard not in done]
    todo = new[:job.max_shards] if job.max_shards is not None else new
    summary = Summary(shards_pending=len(new) - len(todo))
    progress = Progress(todo)  # from now: the rates count the start-up a user waits for
    with _data_context(target_max_block_size=job.batch_bytes, enable_progress_bars=False,
                       print_on_execution_start=False):
        batches = iter(_encoded(job, todo, job.milvus_uri is not None, cpus).iter_batches(
            batch_size=None, batch_format="pyarrow", prefetch_batches=PREFETCH) if todo else ())
        first = next(batches, None)  # starts the pipeline: reading, and the actors loading the model
        # The revision and dtype of the identity: what the actors run, as they say with every block (the driver
        # may have no GPU, or another CPU, and resolve `auto` differently); asked of a task with the actors'
        # resources when nothing is encoded. Nothing is written before the output folder is known to hold this
        # job's output (or none).
        resolved = resolution(first) if first is not None else ray.get(
            ray.remote(resolve_encoder).options(num_cpus=0, num_gpus=job.num_gpus).remote(job.encoder))
        if job.overwrite:
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(out, job.identity(**resolved))
        sink = _sink(job)
        try:
            summary.milvus_rows = None if sink is None else sum(
                _catch_up(manifest, file.shard, out, sink) for file in files if file.shard in done)
            summary.shards_skipped = sum(file.shard in done for file in files)
            if todo:
                shards = _Shards(job, todo, out, manifest, resolved, sink, summary, progress, on_progress)
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
