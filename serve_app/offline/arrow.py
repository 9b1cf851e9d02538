"""The three BGE-M3 outputs as Arrow columns, for the parquet files the offline job writes.

List columns are built from one flat numpy buffer and offsets (no per-float Python objects).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..core.outputs import Embedding

# Columns that stay with a row from the reader to the writer (where the row came from, and why it failed).
ROW_COLUMNS = ("shard", "row", "id", "error")


def arrow_schema(dim: int, colbert: bool, text: bool = False) -> pa.Schema:
    """Schema of the offline job's parquet output (`text` last, only when asked: the Milvus sink's)."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("dense", pa.list_(pa.float32(), dim)),
        pa.field("sparse_indices", pa.list_(pa.int32())),
        pa.field("sparse_values", pa.list_(pa.float32())),
    ]
    if colbert:
        fields.append(pa.field("colbert", pa.list_(pa.list_(pa.float32(), dim))))
    fields += [pa.field("n_tokens", pa.int32()), pa.field("truncated", pa.bool_())]
    if text:
        fields.append(pa.field("text", pa.string()))
    return pa.schema(fields)


def _list_array(lengths: np.ndarray, values: pa.Array) -> pa.Array:
    """A list<...> column: row i holds the next `lengths[i]` items of `values`."""
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _concat(parts: list, dtype, width: int | None = None) -> np.ndarray:
    empty = np.zeros((0, width) if width else 0, dtype)
    return np.concatenate(parts).astype(dtype, copy=False) if parts else empty


def embedding_columns(embeddings: list[Embedding], dim: int, colbert: bool) -> dict[str, pa.Array]:
    """One value per text in each column: dense, sparse ids/weights, optional ColBERT, token facts."""
    dense = _concat([e.dense for e in embeddings], np.float32)
    indices = [e.sparse_indices for e in embeddings]
    values = [e.sparse_values for e in embeddings]
    lengths = np.fromiter((0 if i is None else len(i) for i in indices), np.int64, len(indices))
    columns = {
        "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense, pa.float32()), dim),
        "sparse_indices": _list_array(lengths, pa.array(_concat(indices, np.int32), pa.int32())),
        "sparse_values": _list_array(lengths, pa.array(_concat(values, np.float32), pa.float32())),
    }
    if colbert:
        vecs = [e.colbert for e in embeddings]
        rows = _concat(vecs, np.float32, width=dim).reshape(-1)
        columns["colbert"] = _list_array(np.fromiter((0 if v is None else len(v) for v in vecs), np.int64, len(vecs)),
                                         pa.FixedSizeListArray.from_arrays(pa.array(rows, pa.float32()), dim))
    columns["n_tokens"] = pa.array(np.fromiter((e.n_tokens for e in embeddings), np.int32, len(embeddings)))
    columns["truncated"] = pa.array([e.truncated for e in embeddings], pa.bool_())
    return columns
