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

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel, ConfigDict, Field

from ..core.cache import CacheConfig
from ..core.config import EncoderConfig
from .actor import EncodeBatch, resolve_encoder
from .inputs import InputFile, find_inputs, read_rows

if TYPE_CHECKING:
    from .milvus_sink import MilvusSink

MANIFEST = "_manifest.json"


class OfflineJob(BaseModel):
    """Everything one offline run needs; also what a resumed run must match."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    encoder: EncoderConfig = EncoderConfig()
    text_field: str = "text"
    id_field: str | None = None
    colbert: bool = False
    concurrency: int = Field(1, ge=1, description="encoder actors")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractional shares a GPU")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor")
    batch_size: int = Field(256, ge=1, description="rows per map_batches call")
    overwrite: bool = False
    max_shards: int | None = Field(None, ge=1, description="stop after this many new shards (partial runs)")
    address: str | None = Field(None, description="Ray cluster address; default: RAY_ADDRESS or a local Ray")
    milvus_uri: str | None = Field(None, description="also upsert into Milvus: a Milvus Lite `.db` file or "
                                                     "http://host:19530")
    milvus_collection: str = Field("bge_m3", description="Milvus collection, created when missing")
    cache: CacheConfig = Field(CacheConfig(backend="off"), description="embedding cache the actors consult and "
                               "fill, e.g. the online service's Redis (off by default)")

    def identity(self, revision: str, dtype: str) -> dict:
        """What makes the output what it is; a resumed run must match it.

        The vectors depend on the weights (the checkpoint `revision`), the `dtype` they run in (resolved,
        never `auto`: see `resolve_encoder`), `max_length`, normalization and which outputs are written;
        not on the device, threads or batching. With Milvus on, the parquet also holds the text (the sink's
        source), so that is part of it; where the rows go is not: a run into another URI or collection
        upserts the finished shards there too.
        """
        identity = {"model_revision": revision, "dtype": dtype, "max_length": self.encoder.max_length,
                    "normalize_dense": self.encoder.normalize_dense, "colbert": self.colbert,
                    "text_field": self.text_field, "id_field": self.id_field}
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

    def line(self) -> str:
        """One human line for the CLI."""
        return (f"rows={self.rows} tokens={self.tokens} errors={self.errors} wall={self.wall_s:.1f}s "
                f"rows/s={self.rows_per_s:.1f} shards: done={self.shards_done} skipped={self.shards_skipped} "
                f"pending={self.shards_pending}" + ("" if self.milvus_rows is None else f" milvus={self.milvus_rows}"))


class Manifest:
    """`_manifest.json`: the job identity and the completed shards with their counts."""

    def __init__(self, out: Path, identity: dict):
        self.path = out / MANIFEST
        state = json.loads(self.path.read_text()) if self.path.exists() else {"job": identity, "shards": {}}
        if state["job"] != identity:
            differences = "; ".join(f"{key}: {state['job'].get(key)!r} there, {identity.get(key)!r} now"
                                    for key in sorted(state["job"].keys() | identity.keys())
                                    if state["job"].get(key) != identity.get(key))
            raise ValueError(f"{out} holds output of a different job ({differences}); use --overwrite or another "
                             "output directory")
        self.state = state

    def done(self, shard: str) -> bool:
        """Whether the shard's output is complete."""
        return shard in self.state["shards"]

    def counts(self, shard: str) -> dict:
        """What a complete shard holds (rows, tokens, errors; `milvus`: where it was upserted, how many rows)."""
        return self.state["shards"][shard]

    def mark_done(self, shard: str, counts: dict) -> None:
        """Record a complete shard (atomically: write a temp file, then rename)."""
        self.state["shards"][shard] = counts
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.path)


def _bad_rows(batch: pa.Table, file: str) -> pa.Table:
    """Error rows with where they are: the id (when it could be read), the reason, the file and its row."""
    bad = batch.filter(pc.is_valid(batch["error"]))
    return pa.table({"id": bad["id"], "error": bad["error"], "file": pa.array([file] * bad.num_rows, pa.string()),
                     "row": bad["row"]})


def _good_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch["error"])).select(["id", "text"])


def _run_shard(job: OfflineJob, file: InputFile, out: Path, sink: MilvusSink | None, actor_kwargs: dict) -> dict:
    path, name = file
    staging = out / "_staging" / name
    for leftover in (staging, out / "data" / name, out / "errors" / name):
        shutil.rmtree(leftover, ignore_errors=True)  # from an interrupted run: redo the whole shard
    rows = read_rows(path, job.text_field, job.id_field, name)
    # Split before the encoder pool starts: its actors may hold every CPU of a small cluster, and a
    # filter task waiting behind them would never run.
    bad = rows.map_batches(_bad_rows, fn_kwargs={"file": str(path)},
                           batch_format="pyarrow").materialize()
    good = rows.map_batches(_good_rows, batch_format="pyarrow").materialize()
    n_errors = bad.count()
    if n_errors:
        bad.write_parquet(str(staging / "errors"))
    good.map_batches(
        EncodeBatch, fn_constructor_kwargs={**actor_kwargs, "colbert": job.colbert, "keep_text": sink is not None,
                                          "cache": job.cache},
        batch_size=job.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=job.concurrency),
        num_gpus=job.num_gpus or None, num_cpus=job.num_cpus,
    ).write_parquet(str(staging / "data"), ray_remote_args={"num_cpus": 0})  # I/O only; never starved
    n_rows, n_tokens = 0, 0
    if (staging / "data").exists():
        tokens = pq.read_table(staging / "data", columns=["n_tokens"]).column("n_tokens")
        n_rows, n_tokens = len(tokens), int(pc.sum(tokens).as_py() or 0)
    counts = {"input": str(path), "rows": n_rows, "tokens": n_tokens, "errors": n_errors}
    if sink is not None:  # before the shard is moved into place and recorded: a crash re-upserts it
        counts["milvus"] = {**sink.target, "rows": sink.upsert_parquet(staging / "data")}
    for kind in ("data", "errors"):
        if (staging / kind).exists():
            (out / kind).mkdir(parents=True, exist_ok=True)
            (staging / kind).replace(out / kind / name)
    shutil.rmtree(staging, ignore_errors=True)
    return counts


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


def embed_corpus(job: OfflineJob) -> Summary:
    """Embed every input row not yet embedded into `job.output`; returns this run's summary."""
    started = time.monotonic()
    out = Path(job.output)
    files = find_inputs(job.input)  # refuses bad inputs before anything is deleted or written
    if not ray.is_initialized():
        ray.init(address=job.address, log_to_driver=False)
    # The revision and dtype the actors will use, resolved once with their resources, then given to them
    # explicitly: every actor runs the recorded dtype, whatever `auto` would pick on its own node.
    resolved = ray.get(ray.remote(resolve_encoder).options(num_cpus=job.num_cpus, num_gpus=job.num_gpus)
                       .remote(job.encoder))
    actor_kwargs = {"encoder_config": job.encoder.model_copy(update={"dtype": resolved["dtype"]}),
                    "revision": resolved["revision"]}
    if job.overwrite:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, job.identity(**resolved))
    sink = _sink(job)
    summary, milvus_rows = Summary(), 0  # milvus_rows: upserted by this run, reported only with a sink
    for file in files:
        name = file.shard
        if manifest.done(name):
            summary.shards_skipped += 1
            if sink is not None:
                milvus_rows += _catch_up(manifest, name, out, sink)
            continue
        if job.max_shards is not None and summary.shards_done >= job.max_shards:
            summary.shards_pending += 1
            continue
        counts = _run_shard(job, file, out, sink, actor_kwargs)
        manifest.mark_done(name, counts)
        summary.rows += counts["rows"]
        summary.tokens += counts["tokens"]
        summary.errors += counts["errors"]
        summary.shards_done += 1
        if sink is not None:
            milvus_rows += counts["milvus"]["rows"]
    if sink is not None:
        sink.close()
        summary.milvus_rows = milvus_rows
    summary.wall_s = time.monotonic() - started
    return summary


def read_output(output: str, kind: str = "data") -> pa.Table:
    """All rows of a finished job's `data` (embeddings) or `errors`, as one Arrow table."""
    path = Path(output) / kind
    return pq.read_table(path) if path.exists() else pa.table({})
