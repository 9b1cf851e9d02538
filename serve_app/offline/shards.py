"""Committing shards: each input file's encoded rows filed as they arrive, and the shard made part of the
output only when complete.

A shard is written to `_staging/<shard>/` (`ShardWriter`); once the next shard's rows arrive (blocks come in
input order) or the job ends, it is upserted into Milvus (when on), moved into `data/<shard>/` and
`errors/<shard>/`, and recorded in the manifest, in that order: a crash before the record redoes the whole
shard (and upserts it again, by id: never twice), so the output holds each input row exactly once.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from ..core.identity import ModelIdentity
from .actor import block_identities
from .inputs import InputFile
from .job import OfflineJob, Summary
from .manifest import Manifest
from .progress import Progress, ProgressCallback
from .writer import ShardWriter

if TYPE_CHECKING:
    from .milvus_sink import MilvusSink


def check_identity(table: pa.Table, expected: ModelIdentity) -> None:
    """Refuse rows encoded by an encoder of another identity than the job's (`RuntimeError`)."""
    others = [identity for identity in block_identities(table) if identity != expected]
    if others:
        raise RuntimeError(f"an encoder actor runs {others[0].model_dump()} where the job runs "
                           f"{expected.model_dump()}: every node must load the same checkpoint, in the same dtype "
                           "(set --dtype rather than auto on mixed hardware)")


class Shards:
    """The shards of this run, filed in order as their rows arrive; each committed (moved into place and
    recorded) as soon as the next one begins, or the run ends. Adds what it commits to `summary`."""

    def __init__(self, job: OfflineJob, files: list[InputFile], manifest: Manifest, identity: ModelIdentity,
                 sink: MilvusSink | None, summary: Summary, progress: Progress,
                 on_progress: ProgressCallback | None = None):
        self.job, self.files, self.out, self.manifest, self.sink = job, files, Path(job.output), manifest, sink
        self.identity = identity
        self.summary, self.progress, self.on_progress = summary, progress, on_progress
        self.current = -1
        self.writer: ShardWriter | None = None
        for file in files:  # from an interrupted run: redo the whole shard
            for leftover in (self._staging(file), self.out / "data" / file.shard, self.out / "errors" / file.shard):
                shutil.rmtree(leftover, ignore_errors=True)

    def _staging(self, file: InputFile) -> Path:
        return self.out / "_staging" / file.shard

    def add(self, table: pa.Table) -> None:
        """File the encoded rows of `table` (ascending shards), committing every shard before the first here."""
        if not table.num_rows:
            return
        check_identity(table, self.identity)
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
                self._commit()
            self.current += 1
            file = self.files[self.current]
            self.writer = ShardWriter(self._staging(file), str(file.path), self.job.colbert, self.sink is not None)

    def close(self) -> None:
        """Commit the last shard with rows and every shard after it (files without rows)."""
        self._advance(len(self.files) - 1)
        self._commit()
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _commit(self) -> None:
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


def open_sink(job: OfflineJob) -> MilvusSink | None:
    """The job's Milvus target (None without one)."""
    if not job.milvus_uri:
        return None
    from .milvus_sink import MilvusSink  # pymilvus is an optional extra

    return MilvusSink(job.milvus_uri, job.milvus_collection)


def catch_up(manifest: Manifest, name: str, sink: MilvusSink) -> int:
    """Upsert a shard committed earlier into another Milvus target into this one, from its parquet (no
    re-encoding); returns the rows upserted (0: it is there already)."""
    counts = manifest.counts(name)
    if {k: v for k, v in counts.get("milvus", {}).items() if k != "rows"} == sink.target:
        return 0
    rows = sink.upsert_parquet(manifest.path.parent / "data" / name)
    manifest.mark_done(name, {**counts, "milvus": {**sink.target, "rows": rows}})
    return rows
