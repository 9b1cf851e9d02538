"""Content-addressed cache of BGE-M3 embeddings: `store` (config and the text-level cache), `codec` (keys
and the binary entry format), `backends` (memory LRU, Redis), `cached_encoder` (the encoder behind it, and
the one place a call's cache hits and its computed misses are split and merged)."""

from .backends import MemoryCache, RedisCache
from .codec import cache_key, pack, unpack
from .store import CacheConfig, EmbeddingCache

__all__ = ["CacheConfig", "EmbeddingCache", "MemoryCache", "RedisCache", "cache_key", "pack", "unpack"]
