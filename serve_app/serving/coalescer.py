"""The model replica's coalescer: concurrent jobs gathered, by real tokens, into batches for the device.

`@serve.batch` (applied per replica, so every knob comes from `BatchingConfig`, live) owns the queue: it
gathers jobs up to `max_queue_tokens` real tokens, or what arrived within `batch_wait_timeout_s`, and hands
each batch to the device runner; up to `max_concurrent_batches` batches are formed ahead of the device.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve

from .admission import DeviceLoad
from .config import BatchingConfig
from .job import Job
from .schemas import EncodeResult

RunBatch = Callable[[list[Job]], Awaitable[list[EncodeResult | Exception]]]


def _count_tokens(jobs: list[Job]) -> int:
    """Batch size for `@serve.batch`: real tokens, not requests."""
    return sum(job.n_tokens for job in jobs)


class Coalescer:
    """Batches of jobs for `run` (the device runner), each job counted in `load` until answered."""

    def __init__(self, run: RunBatch, load: DeviceLoad, config: BatchingConfig):
        self._run, self._load = run, load
        self._batched: Any = None  # `run`, wrapped by `serve.batch`
        self.config = config
        self.configure(config)

    def configure(self, config: BatchingConfig) -> None:
        """Apply new settings; queued jobs keep their place (a new decorator only for a new concurrency)."""
        if self._batched is None or config.max_concurrent_batches != self.config.max_concurrent_batches:
            self._batched = serve.batch(
                max_batch_size=config.max_queue_tokens, batch_wait_timeout_s=config.batch_wait_timeout_s,
                max_concurrent_batches=config.max_concurrent_batches, batch_size_fn=_count_tokens,
            )(self._run)
        else:
            self._batched.set_max_batch_size(config.max_queue_tokens)
            self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.config = config

    async def submit(self, job: Job) -> EncodeResult:
        """Queue `job` and wait for its result; raises its own failure. Cancelling this await drops the job
        if its batch has not started (the runner skips cancelled jobs)."""
        with self._load.queued(job):
            outcome = await self._batched(job)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
