"""Serialization of the three BGE-M3 outputs, in one place: JSON bodies for HTTP.

Vectors stay numpy arrays until orjson writes them (no per-float Python objects).
"""

from __future__ import annotations

import base64
from typing import Any, cast

import numpy as np
import orjson

from ..core.outputs import Embedding
from ..serving.schemas import EncodeResult


def dumps(payload: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars serialize natively."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _array(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def quantize_dense(vector: np.ndarray, dtype: str) -> np.ndarray:
    """A (normalized) dense vector in a smaller type, with fixed ranges so results do not depend on batches.

    int8: round(x * 127); uint8: round((x + 1) * 127.5); binary / ubinary: one bit per dimension
    (x > 0) packed 8 per byte, as int8 (byte - 128) / uint8 — the sentence-transformers convention.
    """
    if dtype == "float32":
        return _array(vector)
    if dtype == "int8":
        return np.clip(np.rint(vector * 127), -127, 127).astype(np.int8)
    if dtype == "uint8":
        return np.clip(np.rint((vector + 1) * 127.5), 0, 255).astype(np.uint8)
    packed = np.packbits(np.asarray(vector) > 0)
    if dtype == "ubinary":
        return packed
    if dtype == "binary":
        return (packed.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unknown dense dtype {dtype!r}")


def vector_out(values: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """An array as a JSON list, or its little-endian bytes in base64 (any dtype; OpenAI's `base64` for float32)."""
    if encoding_format != "base64":
        return values
    return base64.b64encode(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False)
                            .tobytes()).decode("ascii")


def usage(result: EncodeResult) -> dict:
    """OpenAI-style token usage (embeddings have no completion tokens)."""
    return {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}


def openai_embeddings(result: EncodeResult, model: str, encoding_format: str, dtype: str = "float32") -> dict:
    """The body of `POST /v1/embeddings` (`dtype` other than float32 is this server's extension)."""
    return {
        "object": "list",
        # dense was asked for, so it is set
        "data": [{"object": "embedding", "index": i,
                  "embedding": vector_out(quantize_dense(cast(np.ndarray, e.dense), dtype), encoding_format)}
                 for i, e in enumerate(result.embeddings)],
        "model": model,
        "usage": usage(result),
    }


def embedding_json(embedding: Embedding, index: int, encoding_format: str = "float", dense_dtype: str = "float32",
                   colbert_dtype: str = "float32") -> dict:
    """One text of `POST /encode`: whichever outputs were computed, plus its token facts.

    `encoding_format="base64"` sends dense and ColBERT as base64 of their little-endian bytes (ColBERT
    row-major, `colbert_shape` alongside); dense may be quantized, ColBERT sent as float16.
    """
    item: dict = {"index": index, "n_tokens": embedding.n_tokens, "truncated": embedding.truncated}
    if embedding.dense is not None:
        item["dense"] = vector_out(quantize_dense(embedding.dense, dense_dtype), encoding_format)
    if embedding.sparse_values is not None:
        keys = ("tokens", embedding.sparse_tokens) if embedding.sparse_tokens is not None else (
            "indices", embedding.sparse_indices)
        item["sparse"] = {keys[0]: keys[1], "values": _array(embedding.sparse_values)}
    if embedding.colbert is not None:
        item["colbert"] = vector_out(np.ascontiguousarray(embedding.colbert, dtype=colbert_dtype), encoding_format)
        if encoding_format == "base64":
            item["colbert_shape"] = list(embedding.colbert.shape)
    return item


def encode_response(result: EncodeResult, model: str, **formats: str) -> dict:
    """The body of `POST /encode`; `formats` are `embedding_json`'s keyword arguments."""
    return {
        "object": "list",
        "model": model,
        "data": [embedding_json(e, i, **formats) for i, e in enumerate(result.embeddings)],
        "usage": usage(result),
    }


def score_response(scores: list[dict[str, float]], result: EncodeResult, model: str) -> dict:
    """The body of `POST /score`: one entry per passage, in request order."""
    return {"object": "list", "model": model, "data": [{"index": i, **s} for i, s in enumerate(scores)],
            "usage": usage(result)}


def tei_sparse(result: EncodeResult) -> list[list[dict]]:
    """The body of TEI's `POST /embed_sparse`: each text's `{"index": token_id, "value": weight}` pairs."""
    # sparse was asked for, so both arrays are set
    return [[{"index": int(i), "value": float(v)}
             for i, v in zip(cast(np.ndarray, e.sparse_indices), cast(np.ndarray, e.sparse_values))]
            for e in result.embeddings]


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

