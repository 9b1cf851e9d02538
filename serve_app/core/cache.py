"""Content-addressed cache of BGE-M3 embeddings: an in-process LRU bounded by bytes, or Redis.

An entry's key is a sha256 of (model revision, max_length, requested outputs, text), so a changed
model or setting never serves stale vectors. Values are a compact binary `pack()` of one `Embedding`:

    header  struct "<4sBIIIIII": magic b"BM3\\x01", flags (1 truncated, 2 dense, 4 sparse, 8 tokens,
            16 colbert, 32 colbert is float16), n_tokens, dense dim, sparse nnz, colbert rows,
            colbert dim, number of sparse token strings
    body    little-endian dense f32[dim], sparse ids i32[nnz], weights f32[nnz], colbert f16|f32[rows*dim],
            then token strings as u32 byte lengths + their utf-8 bytes (exact, NUL-safe)

A cache failure never fails a request: Redis errors become misses and dropped writes.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections import OrderedDict
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .outputs import Embedding

logger = logging.getLogger("serve_app.core.cache")

_HEADER = struct.Struct("<4sBIIIIII")
_MAGIC = b"BM3\x01"
_TRUNC, _DENSE, _SPARSE, _TOKENS, _COLBERT, _F16 = 1, 2, 4, 8, 16, 32


class CacheConfig(BaseModel):
    """Where embeddings are cached and how; `backend: off` disables the cache."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["off", "memory", "redis"] = "memory"
    max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="memory backend: bytes of stored entries")
    redis_url: str = "redis://127.0.0.1:6379/0"
    ttl_s: int | None = Field(86400, ge=1, description="redis expiry; None keeps entries until evicted")
    # a slow cache must not slow requests: short socket/connect timeouts, then back-off
    timeout_s: float = Field(0.05, gt=0, description="redis socket and connect timeout")
    colbert_dtype: Literal["float32", "float16"] = Field("float32", description="stored ColBERT precision")
    key_prefix: str = "bge-m3"


def cache_key(revision: str, max_length: int, outputs: str, text: str) -> bytes:
    """sha256 (32 raw bytes) over length-prefixed fields, so no two field tuples share an encoding."""
    digest = hashlib.sha256(b"bge-m3-cache/1")
    for part in (revision, str(int(max_length)), outputs, text):
        # surrogatepass: a key must never raise, whatever the text
        raw = part.encode("utf-8", "surrogatepass")
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


class MemoryCache:
    """In-process LRU bounded by the bytes of stored keys + values; safe to share between threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = self.hits = self.misses = 0
        self._lock = threading.Lock()

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Packed values in key order, None for misses; a hit becomes most recently used."""
        with self._lock:
            values = [self._entries.get(key) for key in keys]
            for key, value in zip(keys, values):
                if value is not None:
                    self._entries.move_to_end(key)
            found = sum(value is not None for value in values)
            self.hits, self.misses = self.hits + found, self.misses + len(keys) - found
        return values

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Store entries, skipping any larger than the whole bound, then evict LRU down to the bound."""
        with self._lock:
            for key, value in items:
                size = len(key) + len(value)
                if size > self.max_bytes:
                    continue
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= len(key) + len(old)
                self._entries[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    old_key, old_value = self._entries.popitem(last=False)
                    self._bytes -= len(old_key) + len(old_value)

    def stats(self) -> dict:
        """Counters and current size."""
        with self._lock:
            return {"backend": "memory", "hits": self.hits, "misses": self.misses, "errors": 0,
                    "entries": len(self._entries), "bytes": self._bytes}


class RedisCache:
    """Redis-backed cache; any failure is a miss or a dropped write, then Redis is skipped for `backoff_s`."""

    backoff_s = 5.0  # a dead Redis then costs one failed call per back-off, not one per request
    warn_every_s = 30.0

    def __init__(self, url: str, ttl_s: int | None, timeout_s: float, key_prefix: str):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # redis-py retries 3 times by default: that would multiply the timeout on every failure
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                            retry=Retry(NoBackoff(), 0))
        self.ttl_s, self._prefix = ttl_s, key_prefix.encode() + b":"
        self.hits = self.misses = self.errors = 0
        self._down_until = self._last_warn = float("-inf")
        self._lock = threading.Lock()

    def redis_key(self, key: bytes) -> bytes:
        """The Redis key of a cache key: prefix, colon, hex digest (readable in redis-cli)."""
        return self._prefix + key.hex().encode()

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self._down_until = now + self.backoff_s
            warn = now - self._last_warn >= self.warn_every_s
            self._last_warn = now if warn else self._last_warn
        if warn:  # the exception type only: messages could carry arguments, and keys must not be logged
            logger.warning("embedding cache: redis call failed (%s); skipping redis for %.0f s",
                           type(exc).__name__, self.backoff_s)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """MGET; all misses while Redis is failing or backing off."""
        values: list[bytes | None] = [None] * len(keys)
        if keys and time.monotonic() >= self._down_until:
            try:
                values = list(self._client.mget([self.redis_key(key) for key in keys]))
            except Exception as exc:  # noqa: BLE001  (any failure is a miss, never a failed request)
                self._failed(exc)
        found = sum(value is not None for value in values)
        with self._lock:
            self.hits, self.misses = self.hits + found, self.misses + len(keys) - found
        return values

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Pipelined SET with EX (no transaction); dropped while Redis is failing or backing off."""
        if not items or time.monotonic() < self._down_until:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(self.redis_key(key), value, ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def stats(self) -> dict:
        """Counters; Redis holds the entries, so their count and size are not known here."""
        with self._lock:
            return {"backend": "redis", "hits": self.hits, "misses": self.misses, "errors": self.errors,
                    "entries": None, "bytes": None}


class EmbeddingCache:
    """What the replica uses: texts in, `Embedding`s (or None) out, for one model revision and max_length."""

    def __init__(self, config: CacheConfig, revision: str, max_length: int):
        self.config, self.revision, self.max_length = config, revision, max_length
        if config.backend == "redis":
            self.backend = RedisCache(config.redis_url, config.ttl_s, config.timeout_s, config.key_prefix)
        else:
            self.backend = MemoryCache(config.max_bytes)
        self._corrupt = self._bad = 0  # unreadable entries read; embeddings that could not be packed
        self._lock = threading.Lock()

    def _keys(self, texts: list[str], outputs: str) -> list[bytes]:
        # order-insensitive outputs; float16 ColBERT is keyed apart so switching to float32 means exact again
        parts = sorted(set(outputs.split("+")))
        if "colbert" in parts and self.config.colbert_dtype == "float16":
            parts.append("colbert16")
        canonical = "+".join(parts)
        return [cache_key(self.revision, self.max_length, canonical, text) for text in texts]

    def lookup(self, texts: list[str], outputs: str) -> list[Embedding | None]:
        """Cached embeddings in text order, None where missing or unreadable; every one a fresh object."""
        found: list[Embedding | None] = []
        for value in self.backend.get_many(self._keys(texts, outputs)):
            try:
                found.append(None if value is None else unpack(value))
            except Exception:  # noqa: BLE001  (a corrupt entry is a miss; the store after it overwrites it)
                with self._lock:
                    self._corrupt += 1
                found.append(None)
        return found

    def store(self, texts: list[str], outputs: str, embeddings: list[Embedding]) -> None:
        """Cache each text's embedding, which must hold exactly the fields `outputs` names. Never raises."""
        items = []
        for key, embedding in zip(self._keys(texts, outputs), embeddings):
            try:
                items.append((key, pack(embedding, self.config.colbert_dtype)))
            except Exception as exc:  # noqa: BLE001  (a malformed embedding is not cached; the request goes on)
                with self._lock:
                    self._bad += 1
                logger.warning("embedding cache: entry not stored (%s)", type(exc).__name__)
        self.backend.put_many(items)

    def stats(self) -> dict:
        """Backend counters (corrupt entries moved from hits to misses + errors), plus `hit_ratio`."""
        stats = self.backend.stats()
        with self._lock:
            corrupt, bad = self._corrupt, self._bad
        stats.update(hits=stats["hits"] - corrupt, misses=stats["misses"] + corrupt,
                     errors=stats["errors"] + corrupt + bad)
        total = stats["hits"] + stats["misses"]
        stats["hit_ratio"] = stats["hits"] / total if total else 0.0
        return stats


def make_cache(config: CacheConfig, revision: str, max_length: int) -> EmbeddingCache | None:
    """The configured cache, or None when `backend` is "off"."""
    return None if config.backend == "off" else EmbeddingCache(config, revision, max_length)
