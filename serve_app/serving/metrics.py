"""Custom metrics of the model replicas (`ray.serve.metrics`): Ray dashboard and Prometheus.

Exported with the `ray_` prefix, e.g. `ray_bge_m3_texts_total`; Serve adds deployment/replica tags.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

_LATENCY_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
_SIZES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
_TOKENS: list[float] = [16, 64, 256, 1024, 4096, 16384, 65536]


class ModelMetrics:
    """The counters and histograms one model replica records."""

    def __init__(self) -> None:
        self.requests = Counter("bge_m3_requests", description="encode requests", tag_keys=("outputs",))
        self.texts = Counter("bge_m3_texts", description="texts encoded")
        self.tokens = Counter("bge_m3_tokens", description="tokens encoded (after truncation)")
        self.truncations = Counter("bge_m3_truncations", description="texts cut to max_length")
        self.errors = Counter("bge_m3_errors", description="failed requests", tag_keys=("kind",))
        self.cache_hits = Counter("bge_m3_cache_hits", description="texts answered from the embedding cache")
        self.cache_misses = Counter("bge_m3_cache_misses", description="texts the cache did not have")
        self.cache_bytes = Gauge("bge_m3_cache_bytes", description="bytes held by the in-process cache")
        self.batch_texts = Histogram("bge_m3_batch_texts", description="texts per model batch", boundaries=_SIZES)
        self.batch_requests = Histogram("bge_m3_batch_requests", description="requests coalesced per model batch",
                                        boundaries=_SIZES)
        self.batch_tokens = Histogram("bge_m3_batch_tokens", description="tokens per model batch",
                                      boundaries=_TOKENS)
        self.encode_latency = Histogram("bge_m3_encode_latency_ms", description="model batch encode time",
                                        boundaries=_LATENCY_MS)
        self.queue_latency = Histogram("bge_m3_queue_latency_ms", description="wait before a request's batch ran",
                                       boundaries=_LATENCY_MS)
