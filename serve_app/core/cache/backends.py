"""Where cache entries live: an in-process LRU bounded by bytes, or Redis.

Both take and give packed entries by key (`get_many`, `put_many`) and count hits, misses and errors.
A Redis failure never fails a request: it is a miss or a dropped write, then Redis is skipped a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import cast

logger = logging.getLogger("serve_app.core.cache")


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
                # bytes, as the client is made without decode_responses
                values = cast(list, self._client.mget([self.redis_key(key) for key in keys]))
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
