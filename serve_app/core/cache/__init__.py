"""Content-addressed cache of BGE-M3 embeddings: `store` (config and the text-level cache), `codec` (keys
and the binary entry format), `backends` (memory LRU, Redis), `cached_encoder` (the encoder behind it)."""

from .backends import MemoryCache, RedisCache
from .codec import cache_key, pack, unpack
from .store import CacheConfig, EmbeddingCache, make_cache

__all__ = ["CacheConfig", "EmbeddingCache", "MemoryCache", "RedisCache", "cache_key",
           "make_cache", "pack", "unpack"]
