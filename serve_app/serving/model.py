"""The model deployment: each replica holds one `Encoder`; `@serve.batch` coalesces concurrent calls.

Every route and output mix enters through `encode()`, which answers cached texts from the embedding
cache, tokenizes the rest (so the batcher can count real tokens) and queues them; `_encode_jobs` runs
one encoder call for the whole coalesced batch, with the union of the requested outputs, off the event
loop so the next batch keeps filling (and, if that call fails, each request alone, so only the one
that cannot run fails).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from time import perf_counter

import numpy as np
from ray import serve

from ..core.cache import CacheConfig, make_cache
from ..core.config import EncoderConfig
from ..core.encoder import Encoder
from ..core.errors import (
    BgeM3Error,
    InputTooLongError,
    InvalidTextError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from ..core.outputs import TokenizedText
from .config import BatchingConfig
from .metrics import ModelMetrics
from .schemas import EncodeRequest, EncodeResult, Timings


@dataclass
class _Job:
    """One caller's request waiting in the batch queue."""

    request: EncodeRequest
    tokens: list[TokenizedText]  # one per text, or several per text (windows) with `windows`
    windows: list[int] | None  # windows per text when overflow="chunk"
    n_tokens: int
    tokenization_ms: float
    enqueued_at: float


def _count_tokens(jobs: list[_Job]) -> int:
    """Batch size for `@serve.batch`: real tokens, not requests."""
    return sum(job.n_tokens for job in jobs)


class EmbeddingModel:
    """Ray Serve model deployment (undecorated: `app.build_app` applies `serve.deployment`)."""

    def __init__(self, encoder_config: EncoderConfig, cache: CacheConfig | None = None):
        self._encoder = Encoder(encoder_config)
        # Keyed by everything that changes the vectors: weights, dtype, normalization, max_length.
        self._cache = make_cache(cache or CacheConfig(backend="off"), "|".join(
            str(v) for v in (encoder_config.model, self._encoder.revision, self._encoder.dtype,
                             encoder_config.normalize_dense)), encoder_config.max_length)
        # One thread owns the device: batches run one at a time while the loop keeps coalescing.
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-compute")
        self._tokenize = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-tokenize")
        self._metrics = ModelMetrics()
        self._counts: Counter[str] = Counter()  # this replica's totals, in `info()` (metrics are cluster-wide)
        self._batching: BatchingConfig | None = None
        self._batched = None
        # Serve then calls reconfigure(user_config) with the deployment's own values, before any request.
        self.reconfigure(BatchingConfig().model_dump())

    def reconfigure(self, user_config: dict) -> None:
        """Apply `BatchingConfig` from `user_config`, live: Serve calls this on every config change.

        A budget that cannot hold one `max_length` text is refused (the replica fails to start, or the
        update fails and the running settings stay).
        """
        config = BatchingConfig.model_validate(user_config or {})
        config.check_holds(self._encoder.max_length)
        if self._batched is None or config.max_concurrent_batches != self._batching.max_concurrent_batches:
            # The batch decorator is applied per replica so all three knobs come from config.
            self._batched = serve.batch(
                max_batch_size=config.max_queue_tokens, batch_wait_timeout_s=config.batch_wait_timeout_s,
                max_concurrent_batches=config.max_concurrent_batches, batch_size_fn=_count_tokens,
            )(self._encode_jobs)
        else:
            self._batched.set_max_batch_size(config.max_queue_tokens)
            self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._batching = config

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        """Encode one request's texts, coalesced with whatever else is in flight on this replica.

        Cached texts skip the model; the rest are tokenized (so the batcher counts real tokens) and queued.
        """
        self._metrics.requests.inc(tags={"outputs": _outputs_tag(request)})
        start = perf_counter()
        loop = asyncio.get_running_loop()
        try:
            cached = ([None] * len(request.texts) if self._cache is None
                      else await loop.run_in_executor(self._tokenize, self._lookup, request))
            misses = [i for i, hit in enumerate(cached) if hit is None]
            if not misses:
                return _cached_result(cached, (perf_counter() - start) * 1e3)
            todo = request if len(misses) == len(cached) else request.model_copy(
                update={"texts": [request.texts[i] for i in misses]})
            try:
                tokens, windows = await loop.run_in_executor(self._tokenize, self._split, todo)
            except (InputTooLongError, InvalidTextError) as exc:  # name the text by its place in `request`
                raise type(exc)(misses[exc.index], *exc.args[1:]) from None
            n_tokens = sum(t.n_tokens for t in tokens)
            if n_tokens > self._batching.max_queue_tokens:
                raise RequestTooLargeError("texts", n_tokens, self._batching.max_queue_tokens, "tokens")
            now = perf_counter()
            queued = self._batched(_Job(todo, tokens, windows, n_tokens, (now - start) * 1e3, now))
            result = await self._until_deadline(queued, request.timeout_s, now - start)
            if isinstance(result, Exception):  # this request's own failure in a batch the others survived
                raise result
            if self._cache is not None:
                await loop.run_in_executor(self._tokenize, self._store, todo, result.embeddings)
            return result if todo is request else _merge_cached(cached, misses, result)
        except BgeM3Error as exc:
            self._metrics.errors.inc(tags={"kind": type(exc).__name__})
            raise
        except Exception:
            self._metrics.errors.inc(tags={"kind": "internal"})
            raise

    async def _until_deadline(self, queued, timeout_s: float | None, elapsed_s: float) -> EncodeResult:
        if timeout_s is None:
            return await queued
        # Cancelling the wait cancels the queued job: the batcher skips cancelled jobs, so an expired
        # request that has not reached the device is never computed.
        try:
            return await asyncio.wait_for(queued, max(timeout_s - elapsed_s, 0.0))
        except asyncio.TimeoutError:
            self._counts["timed_out_requests"] += 1
            raise RequestTimeoutError(timeout_s) from None

    def _lookup(self, request: EncodeRequest) -> list:
        """Cached embeddings per text (None: compute it)."""
        found = self._cache.lookup(request.texts, _cache_tag(request))
        hits = sum(hit is not None for hit in found)
        if hits:
            self._metrics.cache_hits.inc(hits)
        if hits < len(found):
            self._metrics.cache_misses.inc(len(found) - hits)
        return found

    def _store(self, request: EncodeRequest, embeddings: list) -> None:
        self._cache.store(request.texts, _cache_tag(request), embeddings)
        stored = self._cache.stats().get("bytes")
        if stored is not None:
            self._metrics.cache_bytes.set(stored)

    def _split(self, request: EncodeRequest) -> tuple[list[TokenizedText], list[int] | None]:
        """Token ids for the batcher: one item per text, or its windows for overflow="chunk"."""
        if request.overflow == "chunk":
            groups = self._encoder.tokenize_windows(request.texts)
            return [w for g in groups for w in g], [len(g) for g in groups]
        return self._encoder.tokenize(request.texts, truncate=request.truncate), None

    async def tokenize(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict]]:
        """Tokens of each text with ids, strings and character spans (TEI's /tokenize)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenize, partial(self._encoder.token_details, texts, add_special_tokens=add_special_tokens))

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """Token ids back to text (TEI's /decode)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenize, partial(self._encoder.decode, ids, skip_special_tokens=skip_special_tokens))

    async def encode_many(self, requests: list[EncodeRequest]) -> list[EncodeResult | Exception]:
        """Several callers' requests in one call (the ingress coalesces its HTTP requests, saving an RPC
        each); each still enters the batch queue on its own. A failed request comes back as its error."""
        return await asyncio.gather(*(self.encode(r) for r in requests), return_exceptions=True)

    async def _encode_jobs(self, jobs: list[_Job]) -> list[EncodeResult | Exception]:
        """Run one encoder call for all coalesced jobs. If it fails, run each job alone, so that a text
        that cannot run (e.g. out of memory even by itself) fails only its own caller, with its error."""
        started = perf_counter()
        self._record_queue_wait(jobs, started)  # once per job, even when its batch is retried
        try:
            return await self._encode_together(jobs, started)
        except Exception:
            if len(jobs) == 1:
                raise
        results: list[EncodeResult | Exception] = []
        for job in jobs:
            try:
                results += await self._encode_together([job])
            except Exception as exc:
                results.append(exc)
        return results

    async def _encode_together(self, jobs: list[_Job], started: float | None = None) -> list[EncodeResult]:
        """One encoder call for `jobs`, with the union of their outputs; each caller gets only its texts and outputs."""
        started = started or perf_counter()
        flat = [t for job in jobs for t in job.tokens]
        want = {k: any(getattr(job.request, k) for job in jobs) for k in ("dense", "sparse", "colbert")}
        embeddings = await asyncio.get_running_loop().run_in_executor(
            self._compute, partial(self._encoder.encode, flat, sparse_tokens=any(
                j.request.sparse_tokens for j in jobs), **want))
        inference_ms = (perf_counter() - started) * 1e3
        self._record_batch(jobs, flat, inference_ms)
        results, offset = [], 0
        for job in jobs:
            own = embeddings[offset: offset + len(job.tokens)]
            offset += len(job.tokens)
            if job.windows is not None:
                own = self._encoder.merge_windows(own, job.windows)
            for emb in own:  # each Embedding belongs to exactly one job, so trimming in place is safe
                if not job.request.dense:
                    emb.dense = None
                if not job.request.sparse:
                    emb.sparse_indices = emb.sparse_values = emb.sparse_tokens = None
                elif not job.request.sparse_tokens:
                    emb.sparse_tokens = None
                if not job.request.colbert:
                    emb.colbert = None
            results.append(EncodeResult(
                embeddings=own, prompt_tokens=job.n_tokens, batch_requests=len(jobs), batch_texts=len(flat),
                timings=Timings(tokenization_ms=job.tokenization_ms, queue_ms=(started - job.enqueued_at) * 1e3,
                                inference_ms=inference_ms)))
        return results

    def _record_queue_wait(self, jobs: list[_Job], started: float) -> None:
        """Each job's wait in the batch queue, enqueue to batch start (ms): coalescing's latency cost."""
        for job in jobs:
            self._metrics.queue_latency.observe((started - job.enqueued_at) * 1e3)

    def _record_batch(self, jobs: list[_Job], flat: list[TokenizedText], inference_ms: float) -> None:
        tokens = sum(t.n_tokens for t in flat)
        self._counts.update(batches=1, requests=len(jobs), texts=len(flat))
        self._metrics.texts.inc(len(flat))
        self._metrics.tokens.inc(tokens)
        truncated = sum(t.truncated for t in flat)
        if truncated:
            self._metrics.truncations.inc(truncated)
        self._metrics.batch_texts.observe(len(flat))
        self._metrics.batch_requests.observe(len(jobs))
        self._metrics.batch_tokens.observe(tokens)
        self._metrics.encode_latency.observe(inference_ms)

    async def info(self) -> dict:
        """Model, device, batching and cache facts (for `/info` and `/health`)."""
        cache = self._cache.stats() if self._cache is not None else {"backend": "off"}
        return {**self._encoder.describe(), "batching": self._batching.model_dump(), "pid": os.getpid(),
                "counts": dict(self._counts), "cache": cache}

    async def check_health(self) -> None:
        """Serve's health probe: a real one-text encode; raising marks the replica unhealthy.

        The vector must be finite and non-zero: a model producing NaN (e.g. fp16 overflow) or zeros
        answers every request with garbage, which is worse than no answer.
        """
        out = await asyncio.get_running_loop().run_in_executor(
            self._compute, partial(self._encoder.encode, ["health check"], dense=True, sparse=False))
        dense = out[0].dense
        if dense is None or not np.isfinite(dense).all() or not dense.any():
            raise RuntimeError(f"encoder returned an unusable vector ({_describe_vector(dense)})")


def _describe_vector(vector) -> str:
    """What is wrong with a health-check vector, in words."""
    if vector is None:
        return "no dense output"
    return "non-finite values" if not np.isfinite(vector).all() else "all zeros"


def _outputs_tag(request: EncodeRequest) -> str:
    return "+".join(k for k in ("dense", "sparse", "colbert") if getattr(request, k))


def _cache_tag(request: EncodeRequest) -> str:
    """What a cached entry holds: the outputs, token strings, and how long texts were treated (a truncated
    entry must never answer a request that refuses truncation)."""
    extra = [name for name, on in (("tokens", request.sparse and request.sparse_tokens),
                                   ("chunk", request.overflow == "chunk"),
                                   ("strict", request.overflow != "chunk" and not request.truncate)) if on]
    return "+".join([_outputs_tag(request), *extra])


def _cached_result(embeddings: list, lookup_ms: float) -> EncodeResult:
    """A request answered wholly from the cache: no model batch (the lookup time is its tokenization time)."""
    return EncodeResult(embeddings=embeddings, prompt_tokens=sum(e.n_tokens for e in embeddings),
                        batch_requests=0, batch_texts=0, timings=Timings(tokenization_ms=lookup_ms))


def _merge_cached(cached: list, misses: list[int], result: EncodeResult) -> EncodeResult:
    """Put computed embeddings into the cache misses' places, in request order."""
    embeddings = list(cached)
    for index, embedding in zip(misses, result.embeddings):
        embeddings[index] = embedding
    cached_tokens = sum(e.n_tokens for e in cached if e is not None)
    return result.model_copy(update={"embeddings": embeddings, "prompt_tokens": result.prompt_tokens + cached_tokens})
