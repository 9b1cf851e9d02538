"""The embedding cache: keys, the binary format, the byte-bounded LRU, and Redis alive, dead and back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serve_app.core.cache import (
    CacheConfig,
    EmbeddingCache,
    MemoryCache,
    RedisCache,
    backends,
    cache_key,
    pack,
    unpack,
)
from serve_app.core.identity import ModelIdentity
from serve_app.core.outputs import Embedding
from tests.conftest import free_port

RNG = np.random.default_rng(0)


def _embedding(dense=True, sparse=True, tokens=True, colbert=True, nnz=5, rows=7, truncated=False) -> Embedding:
    ids = np.sort(RNG.choice(250_000, size=nnz, replace=False)).astype(np.int32)
    return Embedding(
        n_tokens=rows + 1, truncated=truncated,
        dense=RNG.standard_normal(16).astype(np.float32) if dense else None,
        sparse_indices=ids if sparse else None,
        sparse_values=RNG.random(nnz).astype(np.float32) if sparse else None,
        sparse_tokens=["▁tok", "東京", "", "a\x00b", "x"][:nnz] if tokens else None,
        colbert=(RNG.standard_normal((rows, 16)) / 4).astype(np.float32) if colbert else None,
    )


def _assert_equal(a: Embedding, b: Embedding, atol: float = 0.0) -> None:
    assert (a.n_tokens, a.truncated, a.sparse_tokens) == (b.n_tokens, b.truncated, b.sparse_tokens)
    for name in ("dense", "sparse_indices", "sparse_values", "colbert"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=name)


IDENTITY = ModelIdentity(revision="r", dtype="fp32", max_length=8192, normalize_dense=True)


def _redis_config(port: int, **kw) -> CacheConfig:
    return CacheConfig(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0", **kw)


def test_key_is_deterministic_and_covers_every_field():
    identity = ModelIdentity(revision="rev1", dtype="fp32", max_length=8192, normalize_dense=True)
    base = (identity.cache_namespace(), "dense+sparse", "hello")
    key = cache_key(*base)
    assert key == cache_key(*base) and len(key) == 32
    for change in ({"revision": "rev2"}, {"dtype": "bf16"}, {"max_length": 512}, {"normalize_dense": False}):
        assert cache_key(identity.model_copy(update=change).cache_namespace(), *base[1:]) != key, change
    for changed in ((base[0], "dense", "hello"), (base[0], "dense+sparse", "hello ")):
        assert cache_key(*changed) != key
    # length prefixes: moving characters between fields gives another key
    assert cache_key("ab", "c", "d") != cache_key("a", "bc", "d")
    assert cache_key("r", "o", "\ud800")  # an unpaired surrogate does not raise


@pytest.mark.parametrize("fields", list(itertools.product([False, True], repeat=4)))
def test_pack_round_trips_every_field_combination(fields):
    original = _embedding(*fields, truncated=fields[0])
    restored = unpack(pack(original))
    _assert_equal(original, restored)
    half = unpack(pack(original, "float16"))
    _assert_equal(original, half, atol=1e-3)
    if original.colbert is not None:
        assert half.colbert.dtype == np.float32
        assert len(pack(original, "float16")) < len(pack(original))


def test_pack_edge_cases_and_fresh_arrays():
    empty = Embedding(n_tokens=2, truncated=True, sparse_indices=np.array([], np.int32),
                      sparse_values=np.array([], np.float32), sparse_tokens=[], colbert=np.zeros((0, 16), np.float32))
    _assert_equal(empty, unpack(pack(empty)))
    restored = unpack(pack(_embedding()))
    restored.dense[0] = 1.0  # writable, not a view of the packed bytes
    assert restored.lexical_weights()
    # float64 input is stored as float32
    wide = Embedding(n_tokens=3, truncated=False, dense=np.arange(4, dtype=np.float64))
    assert unpack(pack(wide)).dense.dtype == np.float32
    for bad in (b"", b"garbage", pack(_embedding())[:-1], pack(_embedding()) + b"x"):
        with pytest.raises(ValueError):
            unpack(bad)


def test_memory_lru_evicts_by_bytes():
    value = b"v" * 968  # + 32-byte key = 1000 bytes an entry
    cache = MemoryCache(max_bytes=5000)
    keys = [bytes([i]) * 32 for i in range(8)]
    cache.put_many([(k, value) for k in keys[:5]])
    assert cache.stats()["bytes"] == 5000
    assert cache.get_many([keys[0]]) == [value]  # now most recent
    cache.put_many([(keys[5], value), (keys[6], value)])
    got = cache.get_many(keys[:7])
    assert got[0] == value and got[1] is None and got[2] is None and all(got[3:7])
    cache.put_many([(keys[7], b"x" * 6000)])  # larger than the bound: not stored, nothing evicted
    stats = cache.stats()
    assert cache.get_many([keys[7]]) == [None] and stats["entries"] == 5 and stats["bytes"] <= 5000
    cache.put_many([(keys[0], b"small")])  # replacing an entry re-counts its bytes
    assert cache.stats()["bytes"] == 4000 + 32 + 5


def _check_facade(cache: EmbeddingCache):
    texts = ["alpha", "beta", "gamma"]
    embeddings = [_embedding() for _ in texts]
    assert cache.lookup(texts, "dense+sparse+tokens+colbert") == [None, None, None]
    cache.store(texts[:2], "dense+sparse+tokens+colbert", embeddings[:2])
    found = cache.lookup(texts, "colbert+dense+sparse+tokens")  # order of the outputs does not matter
    _assert_equal(found[0], embeddings[0])
    _assert_equal(found[1], embeddings[1])
    assert found[2] is None
    assert cache.lookup(texts[:1], "dense") == [None]  # other outputs: another entry
    again = cache.lookup(texts[:1], "dense+sparse+tokens+colbert")[0]
    assert again is not found[0] and again.dense is not found[0].dense
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (3, 5) and stats["hit_ratio"] == pytest.approx(3 / 8)
    return stats


def test_memory_facade():
    stats = _check_facade(EmbeddingCache(CacheConfig(), IDENTITY))
    assert stats["backend"] == "memory" and stats["entries"] == 2 and stats["errors"] == 0
    with pytest.raises(ValueError):
        CacheConfig(backnd="memory")


def test_colbert_float16_entries_are_keyed_apart():
    exact = EmbeddingCache(CacheConfig(), IDENTITY)
    half = EmbeddingCache(CacheConfig(colbert_dtype="float16"), IDENTITY)
    assert exact._keys(["t"], "dense+colbert") != half._keys(["t"], "dense+colbert")
    assert exact._keys(["t"], "dense") == half._keys(["t"], "dense")


def test_store_never_raises_on_a_malformed_embedding():
    cache = EmbeddingCache(CacheConfig(), IDENTITY)
    bad = Embedding(n_tokens=2, truncated=False, colbert=np.zeros(3, np.float32))  # not 2-D
    cache.store(["a", "b"], "dense+colbert", [bad, _embedding(sparse=False, tokens=False)])
    assert cache.lookup(["a", "b"], "dense+colbert")[1] is not None and cache.stats()["errors"] == 1


def test_redis_facade_and_ttl(redis_server):
    import redis

    port, _, _ = redis_server
    cache = EmbeddingCache(_redis_config(port, key_prefix="t-facade"), IDENTITY)
    stats = _check_facade(cache)
    assert stats["backend"] == "redis" and stats["errors"] == 0 and stats["entries"] is None
    client = redis.Redis(port=port)
    key = cache.backend.redis_key(cache._keys(["alpha"], "dense+sparse+tokens+colbert")[0])
    assert 86000 < client.ttl(key) <= 86400
    forever = EmbeddingCache(_redis_config(port, key_prefix="t-forever", ttl_s=None), IDENTITY)
    forever.store(["x"], "dense", [_embedding(sparse=False, tokens=False, colbert=False)])
    assert client.ttl(forever.backend.redis_key(forever._keys(["x"], "dense")[0])) == -1


def test_corrupt_redis_value_is_a_miss(redis_server):
    import redis

    port, _, _ = redis_server
    cache = EmbeddingCache(_redis_config(port, key_prefix="t-corrupt"), IDENTITY)
    key = cache.backend.redis_key(cache._keys(["bad"], "dense")[0])
    redis.Redis(port=port).set(key, b"BM3\x01 definitely not an embedding")
    assert cache.lookup(["bad"], "dense") == [None]
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["errors"]) == (0, 1, 1)
    cache.store(["bad"], "dense", [_embedding(sparse=False, tokens=False, colbert=False)])
    assert cache.lookup(["bad"], "dense")[0] is not None  # the recomputed entry overwrites it


class FrozenClock:
    """A monotonic clock that moves only when told: the Redis back-off is then measured on it, not on how
    fast this machine makes the calls."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FrozenClock:
    """The Redis backend's clock, frozen (the `time` module itself is left alone)."""
    clock = FrozenClock()
    monkeypatch.setattr(backends, "time", clock)
    return clock


def test_nothing_listening_costs_nothing(clock):
    cache = EmbeddingCache(_redis_config(free_port()), IDENTITY)
    for i in range(100):
        assert cache.lookup([f"text {i}"], "dense") == [None]
        cache.store([f"text {i}"], "dense", [_embedding(sparse=False, tokens=False, colbert=False)])
    stats = cache.stats()
    assert stats["errors"] == 1 and stats["misses"] == 100  # one failed call, then back-off skipped redis
    assert RedisCache.backoff_s == 5.0
    clock.now += RedisCache.backoff_s  # the back-off is over: the next call tries Redis again, and fails
    assert cache.lookup(["text 0"], "dense") == [None] and cache.stats()["errors"] == 2


def test_redis_down_then_back(redis_server, caplog, clock):
    port, start, stop = redis_server
    cache = EmbeddingCache(_redis_config(port, key_prefix="t-restart"), IDENTITY)
    texts = [f"text {i}" for i in range(100)]
    embeddings = [_embedding(sparse=False, tokens=False, colbert=False) for _ in texts]
    cache.store(texts, "dense", embeddings)
    assert all(cache.lookup(texts, "dense"))
    stop()
    try:
        for text in texts:  # all within the back-off set by the first failed call: the clock stands still
            assert cache.lookup([text], "dense") == [None]
        cache.store(texts, "dense", embeddings)  # does not raise
        assert cache.stats()["errors"] == 1  # one failed call; the back-off skipped Redis for the others
        warnings = [r.getMessage() for r in caplog.records if r.name == "serve_app.core.cache"]
        assert len(warnings) == 1 and "text " not in warnings[0]  # one warning, no texts or keys in it
    finally:
        start()
    assert cache.lookup(texts[:1], "dense") == [None] and cache.stats()["errors"] == 1  # still backing off
    clock.now += cache.backend.backoff_s  # the back-off is over: Redis is asked again
    assert cache.lookup(texts[:1], "dense") == [None]  # no persistence: the restarted server is empty
    assert cache.stats()["errors"] == 1  # and it answered
    cache.store(texts, "dense", embeddings)
    found = cache.lookup(texts, "dense")
    assert all(found)
    _assert_equal(found[7], embeddings[7])
