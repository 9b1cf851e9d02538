"""The model replica's batch queue: concurrent requests coalesced, by real tokens, into one encoder call.

`@serve.batch` (applied per replica, so every knob comes from `BatchingConfig`, live) gathers queued
jobs up to `max_queue_tokens`; one encoder call then computes the union of their outputs, off the event
loop so the next batch keeps filling, and each caller gets only its own texts and outputs. If that call
fails, each job runs alone, so only the one that cannot run fails.

A job past its deadline (wall clock: the caller may be another process or node) or cancelled (its
caller went away) is never computed: it is dropped when its batch forms, and again on the compute thread
right before the encoder call, since a batch formed while another computes may wait there. A caller
past its deadline gets `RequestTimeoutError`. A batch already on the device runs to its end: a forward
pass cannot drop rows midway, so the vectors of a job cancelled then are computed and discarded.
The compute thread keeps a heartbeat (`health.ComputeMonitor`), so the health probe never queues
behind batches (`check_health`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cached_property, partial
from time import perf_counter
from typing import Any, TypeVar

from ray import serve

from ..core.encoder import Encoder
from ..core.errors import DeadlineTooShortError, RequestTimeoutError, WouldMissDeadlineError
from ..core.inputs import EncodeOptions, TokenizedText
from ..core.outputs import Embedding
from .admission import DeviceSpeed, refusal, tokens_ahead
from .config import BatchingConfig
from .health import ComputeMonitor, unusable
from .metrics import ModelMetrics
from .schemas import EncodeResult, Timings

T = TypeVar("T")


@dataclass(eq=False)  # compared by identity: two callers may send equal jobs
class Job:
    """One caller's texts, tokenized, waiting in the queue."""

    options: EncodeOptions
    tokens: list[TokenizedText]  # one per text, or several per text (windows) with `windows`
    windows: list[int] | None  # windows per text when overflow="chunk"
    tokenization_ms: float
    deadline: float | None = None  # wall clock (`time.time()`); past it the job is dropped, never computed
    enqueued_at: float = field(default_factory=perf_counter)
    cancelled: bool = False  # its caller went away: dropped like an expired job

    @cached_property
    def n_tokens(self) -> int:
        """Real tokens this job adds to a batch (cached: Serve's batcher sums a forming batch on each arrival)."""
        return sum(t.n_tokens for t in self.tokens)

    def dropped(self, now: float) -> bool:
        """Whether this job must not be computed at wall-clock time `now`: cancelled, or past its deadline."""
        return self.cancelled or (self.deadline is not None and now >= self.deadline)


def _count_tokens(jobs: list[Job]) -> int:
    """Batch size for `@serve.batch`: real tokens, not requests."""
    return sum(job.n_tokens for job in jobs)


class BatchQueue:
    """Coalesces jobs into encoder calls run on `compute` (one thread owns the device)."""

    def __init__(self, encoder: Encoder, compute: Executor, metrics: ModelMetrics, counts: Counter[str],
                 config: BatchingConfig):
        self._encoder, self._compute, self._metrics, self._counts = encoder, compute, metrics, counts
        self._batched: Any = None  # the `serve.batch`-wrapped `_encode_jobs`
        self.monitor = ComputeMonitor()
        self.speed = DeviceSpeed()  # what admission expects of the device (`admission`)
        encoder.on_layer_done(self.monitor.beat)
        # Real tokens submitted and not yet answered, and those of the batch on the device now (since when).
        self.backlog_tokens, self._computing_tokens, self._computing_since = 0, 0, 0.0
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

    def refusal(self, job: Job, now: float, ahead: int = 0) -> WouldMissDeadlineError | DeadlineTooShortError | None:
        """Admission by cost (`admission`): the error refusing `job` on arrival, or None to queue it;
        `ahead` counts tokens admitted with it but not yet submitted."""
        speed = self.speed.tokens_per_s
        # Read on the event loop while the compute thread writes: the start is stamped before the tokens.
        computing, since = self._computing_tokens, self._computing_since
        queued = tokens_ahead(self.backlog_tokens, computing, perf_counter() - since, speed)
        return refusal(job.n_tokens, job.deadline, now, queued + ahead, speed)

    @property
    def queued_tokens(self) -> int:
        """Real tokens submitted and not yet on the device, the autoscaling signal: work arriving faster
        than the device computes it. One caller at a time queues nothing, however long its texts."""
        return max(self.backlog_tokens - self._computing_tokens, 0)

    async def check_health(self) -> None:
        """Serve's probe, answered without waiting behind batches (see `health`): raises when the running
        compute step has made no progress for `stall_timeout_s` or the last batch's vectors were unusable;
        when the device is idle, runs a real one-text encode (first in line) and raises on an unusable one."""
        if self.monitor.idle:
            [out] = await self._on_device(partial(self._encoder.encode, ["health check"], dense=True, sparse=False))
            problem = unusable(out.dense)
        else:
            quiet, limit = self.monitor.quiet_for(), self.config.stall_timeout_s
            if quiet > limit:
                raise RuntimeError(f"compute stalled: no transformer layer finished for {quiet:.0f} s, more "
                                   f"than user_config.stall_timeout_s ({limit:g} s)")
            problem = self.monitor.last_outputs_problem
        if problem is not None:
            raise RuntimeError(f"encoder returned an unusable vector ({problem})")

    async def _on_device(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the compute thread, counted and stamped by the heartbeat."""
        self.monitor.submitted += 1
        return await asyncio.get_running_loop().run_in_executor(self._compute, self.monitor.run, fn)

    async def _encode_jobs(self, jobs: list[Job]) -> list[EncodeResult | Exception]:
        started = perf_counter()
        for job in jobs:  # once per job, even when its batch is retried below
            self._metrics.queue_latency.observe((started - job.enqueued_at) * 1e3)
        now = time.time()
        live = [job for job in jobs if not job.dropped(now)]  # the batch forms: dropped jobs stay out
        self._counts["expired_dropped"] += sum(not job.cancelled for job in jobs if job not in live)
        done: dict[Job, EncodeResult | Exception] = {}
        try:
            done.update(zip(live, await self._encode_together(live, started)))
        except Exception as exc:
            if len(live) == 1:
                done[live[0]] = exc
            else:
                for job in live:  # each alone: only the one that cannot run fails
                    try:
                        [done[job]] = await self._encode_together([job], perf_counter())
                    except Exception as own:
                        done[job] = own
        return [done[job] if job in done else RequestTimeoutError() for job in jobs]

    async def _encode_together(self, jobs: list[Job], started: float) -> list[EncodeResult | Exception]:
        """One encoder call for those of `jobs` still within their deadline on the compute thread, with
        the union of their outputs; each caller gets only its own, the others `RequestTimeoutError`."""
        if not jobs:
            return []
        computed, embeddings = await self._on_device(partial(self._compute_live, jobs))
        self._counts["expired_dropped"] += sum(not job.cancelled for job in jobs if job not in computed)
        if not computed:
            return [RequestTimeoutError() for _ in jobs]
        inference_ms = (perf_counter() - started) * 1e3
        n_texts = sum(len(job.tokens) for job in computed)
        self._record_batch(computed, [t for job in computed for t in job.tokens], inference_ms)
        results: list[EncodeResult | Exception] = []
        offset = 0
        kept = set(computed)
        for job in jobs:
            if job not in kept:
                results.append(RequestTimeoutError())
                continue
            own = embeddings[offset: offset + len(job.tokens)]
            offset += len(job.tokens)
            if job.windows is not None:
                own = self._encoder.merge_windows(own, job.windows)
            for emb in own:  # each Embedding belongs to exactly one job, so trimming in place is safe
                emb.keep_only(job.options)
            results.append(EncodeResult(
                embeddings=own, prompt_tokens=job.n_tokens, batch_requests=len(computed), batch_texts=n_texts,
                timings=Timings(tokenization_ms=job.tokenization_ms, queue_ms=(started - job.enqueued_at) * 1e3,
                                inference_ms=inference_ms)))
        return results

    def _compute_live(self, jobs: list[Job]) -> tuple[list[Job], list[Embedding]]:
        """On the compute thread, right before the encoder call: drop the jobs cancelled or past their
        deadline while this batch waited for the device, encode the rest in one call (and judge its vectors
        for health)."""
        now = time.time()
        live = [job for job in jobs if not job.dropped(now)]
        if not live:
            return live, []
        union = EncodeOptions(dense=any(j.options.dense for j in live), sparse=any(j.options.sparse for j in live),
                              colbert=any(j.options.colbert for j in live),
                              sparse_tokens=any(j.options.sparse_tokens for j in live))
        flat = [t for job in live for t in job.tokens]
        self._computing_since = started = perf_counter()
        self._computing_tokens = sum(t.n_tokens for t in flat)  # on the device, no longer queued
        try:
            embeddings = self._encoder.encode_tokens(flat, union)
            self.speed.record(self._computing_tokens, perf_counter() - started)
        finally:
            self._computing_tokens = 0
        self.monitor.check_outputs(embeddings)
        return live, embeddings

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
