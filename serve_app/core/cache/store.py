"""The embedding cache the encoder's callers use: texts and options in, `Embedding`s (or None) out.

Configured by `CacheConfig`; keyed per model identity (see `codec`); backed by memory or Redis (see
`backends`). A cache failure never fails a request.
"""

from __future__ import annotations

import logging
import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..identity import ModelIdentity
from ..inputs import Inputs
from ..outputs import Embedding
from .backends import MemoryCache, RedisCache
from .codec import cache_key, pack, unpack

logger = logging.getLogger("serve_app.core.cache")


class CacheConfig(BaseModel):
    """Where embeddings are cached and how; `backend: off` disables the cache."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["off", "memory", "redis"] = Field("memory", description="off; memory: per replica, an LRU "
                                                      "bounded by max_bytes; redis: shared by every replica")
    max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="memory backend: bytes of stored entries")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="redis backend: where Redis listens")
    ttl_s: int | None = Field(86400, ge=1, description="redis expiry; None keeps entries until evicted")
    # a slow cache must not slow requests: short socket/connect timeouts, then back-off
    timeout_s: float = Field(0.05, gt=0, description="redis socket and connect timeout")
    colbert_dtype: Literal["float32", "float16"] = Field("float32", description="stored ColBERT precision")
    key_prefix: str = Field("bge-m3", description="redis backend: prefix of every key (services sharing a "
                            "Redis keep apart)")
    bulk_fills_memory: bool = Field(False, description="memory backend: bulk requests (backfills) store what they "
                                    "compute too; off, they only read it, so a backfill never evicts the "
                                    "queries' hot entries (redis is filled by every request)")

    def fills_from(self, priority: str) -> bool:
        """Whether a request of `priority` stores what it computed (it always reads)."""
        return priority != "bulk" or self.backend == "redis" or self.bulk_fills_memory


class EmbeddingCache:
    """Texts in, `Embedding`s (or None) out, for one model identity."""

    def __init__(self, config: CacheConfig, identity: ModelIdentity):
        self.config, self._namespace = config, identity.cache_namespace()
        self.backend: MemoryCache | RedisCache
        if config.backend == "redis":
            self.backend = RedisCache(config.redis_url, config.ttl_s, config.timeout_s, config.key_prefix)
        else:
            self.backend = MemoryCache(config.max_bytes)
        self._corrupt = self._bad = 0  # unreadable entries read; embeddings that could not be packed
        self._lock = threading.Lock()

    def _keys(self, texts: Inputs, outputs: str) -> list[bytes]:
        # order-insensitive outputs; float16 ColBERT is keyed apart so switching to float32 means exact again
        parts = sorted(set(outputs.split("+")))
        if "colbert" in parts and self.config.colbert_dtype == "float16":
            parts.append("colbert16")
        canonical = "+".join(parts)
        return [cache_key(self._namespace, canonical, text) for text in texts]

    def lookup(self, texts: Inputs, outputs: str) -> list[Embedding | None]:
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

    def store(self, texts: Inputs, outputs: str, embeddings: list[Embedding]) -> None:
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

