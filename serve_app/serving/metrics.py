"""What one model replica counts, in one object: its metrics (`ray.serve.metrics`: the Ray dashboard and
Prometheus, cluster-wide) and its own totals (`counts`, in `info()`: this replica alone).

Metrics are exported with the `ray_` prefix, e.g. `ray_bge_m3_texts_total`; Serve adds deployment/replica tags.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from ray.serve.metrics import Counter, Gauge, Histogram

from ..core.errors import (
    BgeM3Error,
    DeadlineTooShortError,
    RequestCancelledError,
    RequestTimeoutError,
    WouldMissDeadlineError,
)
from ..core.inputs import EncodeOptions
from .job import Job
from .schemas import PRIORITIES

_LATENCY_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
_SIZES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
_TOKENS: list[float] = [16, 64, 256, 1024, 4096, 16384, 65536]
# The replica's own total that each kind of failure adds to (the others count only in the metric).
_COUNTED = ((RequestTimeoutError, "timed_out_requests"), ((WouldMissDeadlineError, DeadlineTooShortError),
            "refused_by_cost"), (RequestCancelledError, "cancelled_requests"))


class ModelMetrics:
    """The counters and histograms one model replica exports."""

    def __init__(self) -> None:
        self.requests = Counter("bge_m3_requests", description="encode requests", tag_keys=("outputs", "priority"))
        self.texts = Counter("bge_m3_texts", description="texts encoded", tag_keys=("priority",))
        self.tokens = Counter("bge_m3_tokens", description="tokens encoded (after truncation)", tag_keys=("priority",))
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
                                        boundaries=_LATENCY_MS, tag_keys=("priority",))
        self.queue_latency = Histogram("bge_m3_queue_latency_ms", description="wait before a request's batch ran",
                                       boundaries=_LATENCY_MS, tag_keys=("priority",))


class ReplicaStats:
    """Everything a model replica records, each event once: into the exported metrics and its own totals."""

    def __init__(self) -> None:
        self.metrics = ModelMetrics()
        self.counts: Tally[str] = Tally()
        self.encoded = {lane: {"texts": 0, "tokens": 0} for lane in PRIORITIES}  # computed, per lane (`info`)

    def arrived(self, requests: Sequence[tuple[EncodeOptions, str]]) -> None:
        """The requests of one call arrived (what each asks for, its priority), tagged by outputs and priority;
        the totals count calls and requests (requests per call: what the ingress's coalescing achieved, which
        divides the replica's per-call CPU)."""
        self.counts.update(calls=1, requests_received=len(requests))
        for (outputs, priority), n in Tally((o.outputs_tag, priority) for o, priority in requests).items():
            self.metrics.requests.inc(n, tags={"outputs": outputs, "priority": priority})

    def looked_up(self, hits: int, misses: int) -> None:
        """A cache lookup's hits and misses (texts)."""
        if hits:
            self.metrics.cache_hits.inc(hits)
        if misses:
            self.metrics.cache_misses.inc(misses)

    def cache_size(self, stored_bytes: int | None) -> None:
        """The bytes the in-process cache holds (None: a backend that does not say)."""
        if stored_bytes is not None:
            self.metrics.cache_bytes.set(stored_bytes)

    def failed(self, exc: BaseException) -> None:
        """A request failed with `exc`: by kind in the metric, and in the replica's totals where it counts."""
        if not isinstance(exc, BgeM3Error):
            self.metrics.errors.inc(tags={"kind": "internal"})
            return
        self.metrics.errors.inc(tags={"kind": type(exc).__name__})
        for kinds, total in _COUNTED:
            if isinstance(exc, kinds):
                self.counts[total] += 1

    def expired(self, jobs: int) -> None:
        """Jobs dropped past their deadlines before reaching the device."""
        self.counts["expired_dropped"] += jobs

    def waited(self, jobs: Sequence[Job], started: float) -> None:
        """A batch of `jobs` left the queue for the device at `started` (`perf_counter`)."""
        for job in jobs:
            self.metrics.queue_latency.observe((started - job.enqueued_at) * 1e3, tags={"priority": job.priority})

    def computed(self, jobs: Sequence[Job], inference_ms: float) -> None:
        """One encoder call of `jobs` (their texts or windows), done in `inference_ms`: counted per lane."""
        flat = [t for job in jobs for t in job.tokens]
        tokens = sum(t.n_tokens for t in flat)
        self.counts.update(batches=1, requests=len(jobs), texts=len(flat))
        per_lane: dict[str, list[int]] = {}  # lane -> [texts, tokens]: one metric update per lane, not per job
        for job in jobs:
            lane = per_lane.setdefault(job.priority, [0, 0])
            lane[0] += len(job.tokens)
            lane[1] += job.n_tokens
        for priority, (texts, lane_tokens) in per_lane.items():
            encoded = self.encoded[priority]
            encoded["texts"] += texts
            encoded["tokens"] += lane_tokens
            self.metrics.texts.inc(texts, tags={"priority": priority})
            self.metrics.tokens.inc(lane_tokens, tags={"priority": priority})
        truncated = sum(t.truncated for t in flat)
        if truncated:
            self.metrics.truncations.inc(truncated)
        self.metrics.batch_texts.observe(len(flat))
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.batch_tokens.observe(tokens)
        self.metrics.encode_latency.observe(inference_ms, tags={"priority": jobs[0].priority})
