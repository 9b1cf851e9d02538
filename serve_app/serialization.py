"""Serialization of the three BGE-M3 outputs, in one place: JSON bodies for HTTP.

Vectors stay numpy arrays until orjson writes them (no per-float Python objects).
"""

from __future__ import annotations

import base64

import numpy as np
import orjson

from .outputs import Embedding
from .schemas import EncodeResult


def dumps(payload: dict) -> bytes:
    """JSON bytes; numpy arrays and scalars serialize natively."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _array(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def base64_floats(values: np.ndarray) -> str:
    """Little-endian float32 bytes in base64, as OpenAI's `encoding_format=base64`."""
    return base64.b64encode(_array(values).astype("<f4", copy=False).tobytes()).decode("ascii")


def usage(result: EncodeResult) -> dict:
    """OpenAI-style token usage (embeddings have no completion tokens)."""
    return {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}


def openai_embeddings(result: EncodeResult, model: str, encoding_format: str) -> dict:
    """The body of `POST /v1/embeddings`."""
    encode = base64_floats if encoding_format == "base64" else _array
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(e.dense)}
                 for i, e in enumerate(result.embeddings)],
        "model": model,
        "usage": usage(result),
    }


def embedding_json(embedding: Embedding, index: int) -> dict:
    """One text of `POST /encode`: whichever outputs were computed, plus its token facts."""
    item: dict = {"index": index, "n_tokens": embedding.n_tokens, "truncated": embedding.truncated}
    if embedding.dense is not None:
        item["dense"] = _array(embedding.dense)
    if embedding.sparse_values is not None:
        keys = ("tokens", embedding.sparse_tokens) if embedding.sparse_tokens is not None else (
            "indices", embedding.sparse_indices)
        item["sparse"] = {keys[0]: keys[1], "values": _array(embedding.sparse_values)}
    if embedding.colbert is not None:
        item["colbert"] = _array(embedding.colbert)
    return item


def encode_response(result: EncodeResult, model: str) -> dict:
    """The body of `POST /encode`."""
    return {
        "object": "list",
        "model": model,
        "data": [embedding_json(e, i) for i, e in enumerate(result.embeddings)],
        "usage": usage(result),
    }


def score_response(scores: list[dict[str, float]], result: EncodeResult, model: str) -> dict:
    """The body of `POST /score`: one entry per passage, in request order."""
    return {"object": "list", "model": model, "data": [{"index": i, **s} for i, s in enumerate(scores)],
            "usage": usage(result)}


def timing_headers(result: EncodeResult) -> dict[str, str]:
    """TEI-style timing headers (milliseconds), plus how many requests shared the model batch."""
    t = result.timings
    return {
        "x-tokenization-time": f"{t.tokenization_ms:.3f}",
        "x-queue-time": f"{t.queue_ms:.3f}",
        "x-inference-time": f"{t.inference_ms:.3f}",
        "x-compute-tokens": str(result.prompt_tokens),
        "x-batch-requests": str(result.batch_requests),
    }


# --- Arrow (parquet) -------------------------------------------------------------------------------
# Plain Arrow list types, not Ray's tensor extension types, so pandas, DuckDB and vector-store bulk
# importers read the files without Ray.

def arrow_schema(dim: int, colbert: bool, text: bool = False):
    """Schema of the offline job's parquet output (`text` last, only when asked: the Milvus sink's)."""
    import pyarrow as pa

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


def _list_array(parts: list, values):
    """A list<...> column: row i holds `parts[i]`; `values` is all parts concatenated, as Arrow."""
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _concat(parts: list, dtype, width: int | None = None) -> np.ndarray:
    empty = np.zeros((0, width) if width else 0, dtype)
    return np.concatenate(parts).astype(dtype, copy=False) if parts else empty


def embeddings_to_arrow(ids: list[str], embeddings: list[Embedding], dim: int, colbert: bool,
                        texts: list[str] | None = None):
    """One Arrow table row per text: dense, sparse ids/weights, optional ColBERT, token facts, optional text."""
    import pyarrow as pa

    schema = arrow_schema(dim, colbert, text=texts is not None)
    dense = _concat([e.dense for e in embeddings], np.float32)
    indices = [e.sparse_indices for e in embeddings]
    values = [e.sparse_values for e in embeddings]
    columns = {
        "id": pa.array(ids, pa.string()),
        "dense": pa.FixedSizeListArray.from_arrays(pa.array(dense, pa.float32()), dim),
        "sparse_indices": _list_array(indices, pa.array(_concat(indices, np.int32), pa.int32())),
        "sparse_values": _list_array(values, pa.array(_concat(values, np.float32), pa.float32())),
    }
    if colbert:
        vecs = [e.colbert for e in embeddings]
        rows = _concat(vecs, np.float32, width=dim).reshape(-1)
        columns["colbert"] = _list_array(vecs, pa.FixedSizeListArray.from_arrays(pa.array(rows, pa.float32()), dim))
    columns["n_tokens"] = pa.array([e.n_tokens for e in embeddings], pa.int32())
    columns["truncated"] = pa.array([e.truncated for e in embeddings], pa.bool_())
    if texts is not None:
        columns["text"] = pa.array(texts, pa.string())
    return pa.Table.from_pydict(columns, schema=schema)
