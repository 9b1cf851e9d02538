"""The model replica's batch queue: concurrent requests coalesced, by real tokens, into one encoder call.

`@serve.batch` (applied per replica, so every knob comes from `BatchingConfig`, live) gathers queued
jobs up to `max_queue_tokens`; one encoder call then computes the union of their outputs, off the event
loop so the next batch keeps filling, and each caller gets only its own texts and outputs. If that call
fails, each job runs alone, so only the one that cannot run fails.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from ray import serve

from ..core.encoder import Encoder
from ..core.outputs import Embedding, EncodeOptions, TokenizedText
from .config import BatchingConfig
from .metrics import ModelMetrics
from .schemas import EncodeResult, Timings


@dataclass
class Job:
    """One caller's texts, tokenized, waiting in the queue."""

    options: EncodeOptions
    tokens: list[TokenizedText]  # one per text, or several per text (windows) with `windows`
    windows: list[int] | None  # windows per text when overflow="chunk"
    tokenization_ms: float
    enqueued_at: float = field(default_factory=perf_counter)

    @property
    def n_tokens(self) -> int:
        """Real tokens this job adds to a batch."""
        return sum(t.n_tokens for t in self.tokens)


def _count_tokens(jobs: list[Job]) -> int:
    """Batch size for `@serve.batch`: real tokens, not requests."""
    return sum(job.n_tokens for job in jobs)


class BatchQueue:
    """Coalesces jobs into encoder calls run on `compute` (one thread owns the device)."""

    def __init__(self, encoder: Encoder, compute: Executor, metrics: ModelMetrics, counts: Counter[str],
                 config: BatchingConfig):
        self._encoder, self._compute, self._metrics, self._counts = encoder, compute, metrics, counts
        self._batched: Any = None  # the `serve.batch`-wrapped `_encode_jobs`
        # Real tokens submitted and not yet answered, and those of the batch on the device now.
        self.backlog_tokens, self._computing_tokens = 0, 0
        self.config = config
        self.configure(config)

    def configure(self, config: BatchingConfig) -> None:
        """Apply new settings; queued jobs keep their place (a new decorator only for a new concurrency)."""
        if self._batched is None or config.max_concurrent_batches != self.config.max_concurrent_batches:
            self._batched = serve.batch(
                max_batch_size=config.max_queue_tokens, batch_wait_timeout_s=config.batch_wait_timeout_s,
                max_concurrent_batches=config.max_concurrent_batches, batch_size_fn=_count_tokens,
            )(self._encode_jobs)
        else:
            self._batched.set_max_batch_size(config.max_queue_tokens)
            self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.config = config

    async def submit(self, job: Job) -> EncodeResult | Exception:
        """Queue `job`; its `EncodeResult` (or its own error as a value). Counted in `backlog_tokens` until
        answered, failed or cancelled.

        Cancelling this await drops the job if its batch has not started: the batcher skips cancelled jobs.
        """
        self.backlog_tokens += job.n_tokens
        try:
            return await self._batched(job)
        finally:
            self.backlog_tokens -= job.n_tokens

    @property
    def queued_tokens(self) -> int:
        """Real tokens submitted and not yet on the device, the autoscaling signal: work arriving faster
        than the device computes it. One caller at a time queues nothing, however long its texts."""
        return max(self.backlog_tokens - self._computing_tokens, 0)

    async def _encode_jobs(self, jobs: list[Job]) -> list[EncodeResult | Exception]:
        started = perf_counter()
        for job in jobs:  # once per job, even when its batch is retried below
            self._metrics.queue_latency.observe((started - job.enqueued_at) * 1e3)
        try:
            return list(await self._encode_together(jobs, started))
        except Exception:
            if len(jobs) == 1:
                raise
        results: list[EncodeResult | Exception] = []
        for job in jobs:
            try:
                results += await self._encode_together([job], perf_counter())
            except Exception as exc:
                results.append(exc)
        return results

    async def _encode_together(self, jobs: list[Job], started: float) -> list[EncodeResult]:
        """One encoder call for `jobs`, with the union of their outputs; each caller gets only its own."""
        flat = [t for job in jobs for t in job.tokens]
        union = EncodeOptions(dense=any(j.options.dense for j in jobs), sparse=any(j.options.sparse for j in jobs),
                              colbert=any(j.options.colbert for j in jobs),
                              sparse_tokens=any(j.options.sparse_tokens for j in jobs))
        embeddings = await asyncio.get_running_loop().run_in_executor(self._compute, self._compute_batch, flat, union)
        inference_ms = (perf_counter() - started) * 1e3
        self._record_batch(jobs, flat, inference_ms)
        results, offset = [], 0
        for job in jobs:
            own = embeddings[offset: offset + len(job.tokens)]
            offset += len(job.tokens)
            if job.windows is not None:
                own = self._encoder.merge_windows(own, job.windows)
            for emb in own:  # each Embedding belongs to exactly one job, so trimming in place is safe
                emb.keep_only(job.options)
            results.append(EncodeResult(
                embeddings=own, prompt_tokens=job.n_tokens, batch_requests=len(jobs), batch_texts=len(flat),
                timings=Timings(tokenization_ms=job.tokenization_ms, queue_ms=(started - job.enqueued_at) * 1e3,
                                inference_ms=inference_ms)))
        return results

    def _compute_batch(self, flat: list[TokenizedText], union: EncodeOptions) -> list[Embedding]:
        """On the compute thread: the encoder call, its tokens counted as on the device meanwhile."""
        self._computing_tokens = sum(t.n_tokens for t in flat)
        try:
            return self._encoder.encode_tokens(flat, union)
        finally:
            self._computing_tokens = 0

    def _record_batch(self, jobs: list[Job], flat: list[TokenizedText], inference_ms: float) -> None:
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
