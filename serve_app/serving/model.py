"""The model deployment: a thin Serve adapter over the encoder, its cache and the batch queue.

Every route and output mix enters through `encode()`: cached texts are answered from the cache, the
rest are tokenized (so the queue can count real tokens), queued (`batch_queue`), and stored on the way
back. Host work (cache, tokenizer) runs on one thread and the device on another, so the event loop only
coordinates. A request's deadline (`EncodeRequest.deadline` or `timeout_s`) holds from its arrival to
its answer: past it the caller gets `RequestTimeoutError` and its texts are never computed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import perf_counter

import ray

from ..core.cache import CacheConfig
from ..core.cache.cached_encoder import CachingEncoder
from ..core.config import EncoderConfig
from ..core.encoder import Encoder
from ..core.errors import BgeM3Error, RequestTimeoutError, RequestTooLargeError, TextError
from ..core.outputs import Embedding, EncodeOptions
from .autoscaling import QUEUED_TOKENS_METRIC
from .batch_queue import BatchQueue, Job
from .config import BatchingConfig
from .metrics import ModelMetrics
from .schemas import EncodeRequest, EncodeResult, Timings


class EmbeddingModel:
    """Ray Serve model deployment (undecorated: `serving.deployments` applies `serve.deployment`)."""

    def __init__(self, encoder_config: EncoderConfig, cache: CacheConfig | None = None):
        self._encoder = Encoder(encoder_config)
        self._cached = CachingEncoder(self._encoder, cache or CacheConfig(backend="off"))
        self._host = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-host")
        # One thread owns the device: batches run one at a time while the loop keeps coalescing.
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-compute")
        self._metrics = ModelMetrics()
        self._counts: Counter[str] = Counter()  # this replica's totals, in `info()` (metrics are cluster-wide)
        # Serve then calls reconfigure(user_config) with the deployment's own values, before any request.
        self._queue = BatchQueue(self._encoder, self._compute, self._metrics, self._counts, BatchingConfig())

    def reconfigure(self, user_config: dict) -> None:
        """Apply `BatchingConfig` from `user_config`, live: Serve calls this on every config change.

        A budget that cannot hold one `max_length` text is refused (the replica fails to start, or the
        update fails and the running settings stay).
        """
        config = BatchingConfig.model_validate(user_config or {})
        config.check_holds(self._encoder.max_length)
        self._queue.configure(config)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        """Encode one request's texts, coalesced with whatever else is in flight on this replica."""
        options = request.options()
        self._metrics.requests.inc(tags={"outputs": options.outputs_tag})
        try:
            return await self._encode(request, options)
        except BgeM3Error as exc:
            self._metrics.errors.inc(tags={"kind": type(exc).__name__})
            if isinstance(exc, RequestTimeoutError):
                self._counts["timed_out_requests"] += 1
            raise
        except Exception:
            self._metrics.errors.inc(tags={"kind": "internal"})
            raise

    async def _encode(self, request: EncodeRequest, options: EncodeOptions) -> EncodeResult:
        start = perf_counter()
        now = time.time()
        deadline = request.deadline_at(received=now)
        budget = request.timeout_s if request.deadline is None else None  # what the timeout error names
        if deadline is not None and now >= deadline:  # expired on the way here: no work at all
            raise RequestTimeoutError(budget)
        loop = asyncio.get_running_loop()
        cached: list[Embedding | None] = ([None] * len(request.texts) if self._cached.cache is None
                  else await loop.run_in_executor(self._host, self._lookup, request.texts, options))
        misses = [i for i, hit in enumerate(cached) if hit is None]
        if not misses:
            return _cached_result(cached, (perf_counter() - start) * 1e3)  # type: ignore[arg-type]
        texts = request.texts if len(misses) == len(cached) else [request.texts[i] for i in misses]
        try:
            tokens, windows = await loop.run_in_executor(
                self._host, partial(self._encoder.tokenize_for, texts, options))
        except TextError as exc:  # name the text by its place in `request`
            raise exc.renumbered(misses) from None
        job = Job(options, tokens, windows, (perf_counter() - start) * 1e3, deadline)
        limit = self._queue.config.max_queue_tokens
        if job.n_tokens > limit:
            raise RequestTooLargeError("texts", job.n_tokens, limit, "tokens")
        result = await self._until_deadline(self._queue.submit(job), deadline, budget)
        if isinstance(result, Exception):  # this request's own failure in a batch the others survived
            raise result
        if self._cached.cache is not None:
            await loop.run_in_executor(self._host, self._store, texts, options, result.embeddings)
        return result if len(misses) == len(cached) else _merge_cached(cached, misses, result)

    async def _until_deadline(self, queued, deadline: float | None, timeout_s: float | None) -> EncodeResult:
        if deadline is None:
            return await queued
        # The caller is answered at its deadline even while its batch still waits; cancelling the wait
        # drops the job from the queue, and a job already in a batch is dropped there (`batch_queue`).
        try:
            return await asyncio.wait_for(queued, max(deadline - time.time(), 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(timeout_s) from None

    def _lookup(self, texts: list[str], options: EncodeOptions) -> list[Embedding | None]:
        found = self._cached.lookup(texts, options)
        hits = sum(hit is not None for hit in found)
        if hits:
            self._metrics.cache_hits.inc(hits)
        if hits < len(found):
            self._metrics.cache_misses.inc(len(found) - hits)
        return found

    def _store(self, texts: list[str], options: EncodeOptions, embeddings: list[Embedding]) -> None:
        self._cached.store(texts, options, embeddings)
        stored = self._cached.stats().get("bytes")
        if stored is not None:
            self._metrics.cache_bytes.set(stored)

    async def encode_many(self, requests: list[EncodeRequest]) -> list[EncodeResult | BaseException]:
        """Several callers' requests in one call (the ingress coalesces its HTTP requests, saving an RPC
        each); each still enters the batch queue on its own. A failed request comes back as its error."""
        return await asyncio.gather(*(self.encode(r) for r in requests), return_exceptions=True)

    async def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict]]:
        """Tokens of each text with ids, strings and character spans (TEI's /tokenize)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._host, partial(self._encoder.tokens.details, texts, add_special_tokens=add_special_tokens))

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """Token ids back to text (TEI's /decode)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._host, partial(self._encoder.tokens.decode, ids, skip_special_tokens=skip_special_tokens))

    async def info(self) -> dict:
        """Model, device, batching, compute-thread and cache facts (for `/info` and `/health`); `pid` and
        `node_id` say which replica answered (on a cluster, which node: pids repeat across nodes)."""
        return {**self._encoder.describe(), "batching": self._queue.config.model_dump(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "counts": dict(self._counts),
                "compute": self._queue.monitor.describe(),
                "cache": self._cached.stats()}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics: the real tokens queued for this replica's device,
        the signal of `autoscaling.QueuedTokensPolicy` (Serve's ongoing requests here are the ingress's
        coalesced calls, a handful whatever the load)."""
        return {QUEUED_TOKENS_METRIC: self._queue.queued_tokens}

    async def check_health(self) -> None:
        """Serve's health probe; raising marks the replica unhealthy. It never waits behind batches (a long
        one would outlast `health_check_timeout_s`): a stalled device or unusable vectors (NaN or zeros)
        fail it, a busy healthy one passes (`BatchQueue.check_health`, `health`)."""
        await self._queue.check_health()


def _cached_result(embeddings: list[Embedding], lookup_ms: float) -> EncodeResult:
    """A request answered wholly from the cache: no model batch (the lookup time is its tokenization time)."""
    return EncodeResult(embeddings=embeddings, prompt_tokens=sum(e.n_tokens for e in embeddings),
                        batch_requests=0, batch_texts=0, timings=Timings(tokenization_ms=lookup_ms))


def _merge_cached(cached: list[Embedding | None], misses: list[int], result: EncodeResult) -> EncodeResult:
    """Put computed embeddings into the cache misses' places, in request order."""
    embeddings = list(cached)
    for index, embedding in zip(misses, result.embeddings):
        embeddings[index] = embedding
    cached_tokens = sum(e.n_tokens for e in cached if e is not None)
    return result.model_copy(update={"embeddings": embeddings, "prompt_tokens": result.prompt_tokens + cached_tokens})
