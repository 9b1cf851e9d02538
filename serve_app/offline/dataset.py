"""The job's Ray Data dataset: every input row read (`readers.CorpusSource`), encoded by an actor pool of
`actor.EncodeBatch` (or, with `serve_app`, of `via_serve.ServeBatch`, which sends the rows to the app's model
replicas), streamed back to the driver in input order; and the Ray Data settings it runs under.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import ray

from ..core.identity import ModelIdentity
from .actor import EncodeBatch
from .inputs import InputFile
from .job import OfflineJob
from .readers import CorpusSource
from .via_serve import CLIENT_CPUS, ServeBatch

READERS = 2  # input files read at a time
PREFETCH = 0  # batches fetched ahead: any more and Ray Data holds back the first until that many are out


@contextmanager
def data_context(job: OfflineJob):
    """Ray Data's current context with this job's settings (captured when its dataset is made and used while it
    runs), restored afterwards: other datasets of the process keep theirs."""
    context = ray.data.DataContext.get_current()
    # Blocks of about `batch_bytes`: one encoder call each (the reader cuts them to size).
    settings = {"target_max_block_size": job.batch_bytes, "enable_progress_bars": False,
                "print_on_execution_start": False}
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


def encoded_batches(job: OfflineJob, files: list[InputFile], app: tuple[ModelIdentity, int] | None = None
                    ) -> Iterator[pa.Table]:
    """Every row of `files`, encoded, in file order, a block at a time (iterate inside `data_context`). Text is
    kept beside the vectors when Milvus is on: the sink reads it from the shard's parquet. With `job.serve_app`,
    `app` is what its replicas run (their identity and dim, `via_serve.app_identity`)."""
    rows = ray.data.read_datasource(
        CorpusSource(files, job.ids_field or job.text_field, job.id_field, job.batch_bytes, job.ids_field is not None),
        # Reading and parsing are light next to the model, and must never wait behind an actor pool that
        # holds every CPU: no CPU reserved, at most READERS files open at a time. One read task per file,
        # its blocks streamed as they are parsed (Ray would otherwise split them after the fact).
        num_cpus=0, concurrency=min(READERS, len(files)), override_num_blocks=len(files))
    if job.serve_app is not None:
        assert app is not None
        return _batches(rows.map_batches(
            ServeBatch, fn_constructor_kwargs={
                "app": job.serve_app, "identity": app[0], "dim": app[1], "colbert": job.colbert,
                "keep_text": job.milvus_uri is not None, "input_type": job.input_type, "timeout_s": job.bulk_timeout_s,
                "in_flight_per_replica": job.in_flight_per_replica, "actors": job.concurrency},
            # Light actors that wait on the replicas: a fraction of a CPU each, no GPU, no model.
            batch_size=job.batch_size, batch_format="pyarrow", zero_copy_batch=True, num_cpus=CLIENT_CPUS,
            compute=ray.data.ActorPoolStrategy(size=job.concurrency, max_tasks_in_flight_per_actor=1)))
    encoded = rows.map_batches(
        EncodeBatch, fn_constructor_kwargs={"encoder_config": job.encoder, "colbert": job.colbert,
                                          "keep_text": job.milvus_uri is not None, "cache": job.cache,
                                          "input_type": job.input_type},
        # One block (or `batch_size` rows) per call; one call queued per actor: the actor has nothing to
        # overlap with (the model holds its cores), and a queue would only delay the next block's writer.
        batch_size=job.batch_size, batch_format="pyarrow", zero_copy_batch=True, num_gpus=job.num_gpus or None,
        num_cpus=actor_cpus(job),
        compute=ray.data.ActorPoolStrategy(size=job.concurrency, max_tasks_in_flight_per_actor=1))
    return _batches(encoded)


def _batches(encoded: ray.data.Dataset) -> Iterator[pa.Table]:
    return iter(encoded.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=PREFETCH))
