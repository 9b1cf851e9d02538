"""Upsert the offline job's rows into one Milvus collection, so it can be searched as soon as a shard is done.

The collection (created when missing, `dim` from the data) has `id` VARCHAR primary key, `dense`
FLOAT_VECTOR(dim) (AUTOINDEX, IP: the vectors are L2-normalized), `sparse` SPARSE_FLOAT_VECTOR
(SPARSE_INVERTED_INDEX, IP), `text` VARCHAR (to rerank search results; cut to 65,535 UTF-8 bytes, the
VARCHAR limit) and `n_tokens` INT64. Rows are upserted by id in batches, so redoing a shard, resuming a
run or `--overwrite` replaces rows and never duplicates them; an id seen twice keeps its last row.

The URI is a local file ending in `.db` for Milvus Lite (embedded, in this process; the `milvus-lite`
package) or `http://host:19530` for a Milvus server; a server token, if any, comes from `MILVUS_TOKEN`.

Empty sparse vectors (an empty text, or one whose every token weight is 0): a Milvus server >= 2.4.12
accepts `{}`, but Milvus Lite 3.2 rejects it ("must contain at least one nonzero float32 weight"), and a
nullable sparse field (Milvus 3.0) fails there too. Such rows are stored as `EMPTY_SPARSE`: one weight
on dimension 2**32 - 2, the largest Milvus allows and far outside BGE-M3's vocabulary. No query vector
has that dimension, so the row's sparse score is 0 and a sparse search never returns it, as Milvus
treats an empty row; readers of the stored vectors can drop that key.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

try:
    from pymilvus import DataType, MilvusClient
except ImportError as exc:  # the optional `milvus` extra
    raise ImportError("the Milvus sink needs pymilvus and milvus-lite: pip install 'bge-m3-ray[milvus]'") from exc

EMPTY_SPARSE_DIM = 2**32 - 2
EMPTY_SPARSE = {EMPTY_SPARSE_DIM: 1e-30}
MAX_VARCHAR_BYTES = 65_535
FIELDS = ("id", "dense", "sparse", "text", "n_tokens")
COLUMNS = ["id", "dense", "sparse_indices", "sparse_values", "n_tokens", "text"]


def is_local(uri: str) -> bool:
    """Whether the URI names a Milvus Lite file rather than a server."""
    return "://" not in uri and not uri.startswith("unix:")


def connect(uri: str) -> MilvusClient:
    """A client for a Milvus Lite file (its folder created if missing) or a server (`MILVUS_TOKEN`)."""
    if is_local(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))


def _fit(text: str) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= MAX_VARCHAR_BYTES else raw[:MAX_VARCHAR_BYTES].decode("utf-8", "ignore")


def arrow_rows(batch: pa.RecordBatch | pa.Table) -> list[dict]:
    """Milvus rows from the job's parquet columns; one row per id (the last one)."""
    dense = batch.column("dense")
    vectors = pc.list_flatten(dense).to_numpy().astype(np.float32, copy=False).reshape(-1, dense.type.list_size)
    rows = {}
    for i, (key, indices, values, n_tokens, text) in enumerate(zip(
            *(batch.column(c).to_pylist() for c in ("id", "sparse_indices", "sparse_values", "n_tokens", "text")))):
        rows[key] = {"id": key, "dense": vectors[i], "sparse": dict(zip(indices, values)) or EMPTY_SPARSE,
                     "text": _fit(text), "n_tokens": n_tokens}
    return list(rows.values())


class MilvusSink:
    """One collection of one Milvus, written in batches of `batch_size` rows."""

    def __init__(self, uri: str, collection: str, batch_size: int = 512):
        self.uri, self.collection, self.batch_size = uri, collection, batch_size
        self.client = connect(uri)
        self._ready = False

    @property
    def target(self) -> dict:
        """Where rows go, as the manifest records it (a Lite file by absolute path)."""
        return {"uri": os.path.abspath(self.uri) if is_local(self.uri) else self.uri, "collection": self.collection}

    def ensure_collection(self, dim: int) -> None:
        """Create the collection for `dim`-wide dense vectors, or check that the existing one fits; load it."""
        if self.client.has_collection(self.collection):
            fields = {f["name"]: f for f in self.client.describe_collection(self.collection)["fields"]}
            if not set(FIELDS) <= set(fields):
                raise ValueError(f"Milvus collection {self.collection!r} has fields {sorted(fields)}, not the "
                                 f"{list(FIELDS)} this job writes: use another collection name")
            existing = int(fields["dense"]["params"]["dim"])
            if existing != dim:
                raise ValueError(f"Milvus collection {self.collection!r} holds {existing}-dim dense vectors, this "
                                 f"model makes {dim}-dim ones: use another collection name or drop it")
        else:
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR_BYTES)
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            schema.add_field("n_tokens", DataType.INT64)
            index = self.client.prepare_index_params()
            index.add_index("dense", index_type="AUTOINDEX", metric_type="IP")
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
            self.client.create_collection(self.collection, schema=schema, index_params=index)
        self.client.load_collection(self.collection)  # Milvus Lite opens collections released
        self._ready = True

    def upsert(self, data: pa.RecordBatch | pa.Table) -> int:
        """Upsert the job's rows (with their `text` column), `batch_size` at a time; returns the rows sent."""
        sent = 0
        for batch in data.to_batches(self.batch_size) if isinstance(data, pa.Table) else [data]:
            if batch.num_rows == 0:
                continue
            if not self._ready:
                self.ensure_collection(batch.schema.field("dense").type.list_size)
            rows = arrow_rows(batch)
            self.client.upsert(self.collection, rows)
            sent += len(rows)
        return sent

    def upsert_parquet(self, path: Path) -> int:
        """Upsert every row of a shard's parquet folder (none if it is missing); returns the rows sent."""
        files = sorted(Path(path).rglob("*.parquet")) if Path(path).exists() else []
        return sum(self.upsert(batch) for f in files
                   for batch in pq.ParquetFile(f).iter_batches(batch_size=self.batch_size, columns=COLUMNS))

    def close(self) -> None:
        """Release the client (a Milvus Lite file stays open in this process until it exits)."""
        self.client.close()
