"""The binary format of one cached `Embedding`, and the cache key of a text (or list of token ids).

An entry's key is a sha256 of (the model identity's namespace: revision, dtype, max_length, normalization;
the requested outputs; the text as encoded), so a changed model or setting never serves stale vectors.
A list of token ids is hashed under its own domain (`bge-m3-cache/ids/1`, ids as int64), so it never
shares a key with a text.

Values are a compact binary `pack()` of one `Embedding`:

    header  struct "<4sBIIIIII": magic b"BM3\\x01", flags (1 truncated, 2 dense, 4 sparse, 8 tokens,
            16 colbert, 32 colbert is float16), n_tokens, dense dim, sparse nnz, colbert rows,
            colbert dim, number of sparse token strings
    body    little-endian dense f32[dim], sparse ids i32[nnz], weights f32[nnz], colbert f16|f32[rows*dim],
            then token strings as u32 byte lengths + their utf-8 bytes (exact, NUL-safe)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import cast

import numpy as np

from ..outputs import Embedding

_HEADER = struct.Struct("<4sBIIIIII")
_MAGIC = b"BM3\x01"
_TRUNC, _DENSE, _SPARSE, _TOKENS, _COLBERT, _F16 = 1, 2, 4, 8, 16, 32


def cache_key(namespace: str, outputs: str, text: str | Sequence[int]) -> bytes:
    """sha256 (32 raw bytes) over length-prefixed fields, so no two field tuples share an encoding.
    `namespace`: `ModelIdentity.cache_namespace()`."""
    is_text = isinstance(text, str)
    digest = hashlib.sha256(b"bge-m3-cache/1" if is_text else b"bge-m3-cache/ids/1")
    content = (cast(str, text).encode("utf-8", "surrogatepass") if is_text  # a key must never raise
               else np.asarray(text, dtype="<i8").tobytes())
    for raw in (namespace.encode(), outputs.encode(), content):
        digest.update(struct.pack("<Q", len(raw)) + raw)
    return digest.digest()


def _array(values, dtype: str) -> bytes:
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def pack(embedding: Embedding, colbert_dtype: str = "float32") -> bytes:
    """Serialize one embedding to the binary format in the module docstring."""
    if colbert_dtype not in ("float32", "float16"):
        raise ValueError(f"colbert_dtype must be float32 or float16, not {colbert_dtype!r}")
    e, flags, body = embedding, _TRUNC if embedding.truncated else 0, []
    dim = nnz = rows = cdim = ntok = 0
    if e.dense is not None:
        flags |= _DENSE
        dim = int(np.size(e.dense))
        body.append(_array(e.dense, "<f4"))
    if e.sparse_indices is not None and e.sparse_values is not None:
        flags |= _SPARSE
        nnz = int(np.size(e.sparse_indices))
        if np.size(e.sparse_values) != nnz:
            raise ValueError("sparse_indices and sparse_values differ in length")
        body += [_array(e.sparse_indices, "<i4"), _array(e.sparse_values, "<f4")]
    if e.colbert is not None:
        flags |= _COLBERT | (_F16 if colbert_dtype == "float16" else 0)
        colbert = np.asarray(e.colbert)
        if colbert.ndim != 2:
            raise ValueError("colbert must be 2-D")
        rows, cdim = colbert.shape
        body.append(_array(colbert, "<f2" if flags & _F16 else "<f4"))
    if e.sparse_tokens is not None:
        flags |= _TOKENS
        encoded = [t.encode("utf-8", "surrogatepass") for t in e.sparse_tokens]
        ntok = len(encoded)
        body += [_array([len(b) for b in encoded], "<u4"), *encoded]
    return _HEADER.pack(_MAGIC, flags, e.n_tokens, dim, nnz, rows, cdim, ntok) + b"".join(body)


def unpack(data: bytes) -> Embedding:
    """Inverse of `pack`; arrays are fresh writable copies, colbert always float32. ValueError if corrupt."""
    try:
        magic, flags, n_tokens, dim, nnz, rows, cdim, ntok = _HEADER.unpack_from(data)
    except struct.error as exc:
        raise ValueError("cache entry too short") from exc
    if magic != _MAGIC:
        raise ValueError("not a cache entry of this format")
    offset = _HEADER.size

    def take(dtype: str, count: int, out: str) -> np.ndarray:
        nonlocal offset
        size = np.dtype(dtype).itemsize * count
        if offset + size > len(data):
            raise ValueError("cache entry truncated")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).astype(out)  # astype copies
        offset += size
        return array

    e = Embedding(n_tokens=n_tokens, truncated=bool(flags & _TRUNC))
    if flags & _DENSE:
        e.dense = take("<f4", dim, "float32")
    if flags & _SPARSE:
        e.sparse_indices, e.sparse_values = take("<i4", nnz, "int32"), take("<f4", nnz, "float32")
    if flags & _COLBERT:
        e.colbert = take("<f2" if flags & _F16 else "<f4", rows * cdim, "float32").reshape(rows, cdim)
    if flags & _TOKENS:
        lengths, tokens = take("<u4", ntok, "int64").tolist(), []
        for length in lengths:
            if offset + length > len(data):
                raise ValueError("cache entry truncated")
            tokens.append(data[offset:offset + length].decode("utf-8", "surrogatepass"))
            offset += length
        e.sparse_tokens = tokens
    if offset != len(data):
        raise ValueError("cache entry has trailing bytes")
    return e
