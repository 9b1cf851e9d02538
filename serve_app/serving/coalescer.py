"""The model replica's coalescer: concurrent jobs gathered, by real tokens, into batches for the device, one
queue per lane.

`@serve.batch` (applied per replica, so every knob comes from `BatchingConfig`, live) owns each queue: it
gathers jobs up to a token budget, or what arrived within `batch_wait_timeout_s`, and hands each batch to
the device runner, which runs formed batches in priority order (`lanes`); up to `max_concurrent_batches`
batches per lane are formed ahead of the device. The interactive queue's budget is `max_queue_tokens`; the
bulk queue's is `bulk_max_queue_tokens`, smaller, so a query waits behind at most one bulk batch: a bulk job
longer than that is cut between its inputs into parts queued alone and answered together. While no
interactive request has come for `bulk_quiet_s`, the bulk budget is `max_queue_tokens` (a backfill alone
runs in big batches, as fast as it can; the first query after the quiet waits behind one of them). With
`scheduling: fifo` every job takes the interactive queue, in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from ray import serve

from .admission import DeviceLoad
from .config import BatchingConfig
from .job import Job
from .schemas import EncodeResult, Timings

RunBatch = Callable[[list[Job]], Awaitable[list[EncodeResult | Exception]]]


def _count_tokens(jobs: list[Job]) -> int:
    """Batch size for `@serve.batch`: real tokens, not requests."""
    return sum(job.n_tokens for job in jobs)


class Coalescer:
    """Batches of jobs for `run` (the device runner), each job counted in `load` until answered."""

    def __init__(self, run: RunBatch, load: DeviceLoad, config: BatchingConfig):
        self._run, self._load = run, load
        self._queues: dict[str, Any] = {}  # lane -> `run` wrapped by `serve.batch`
        self._interactive_at = float("-inf")  # when the last interactive job came (`perf_counter`)
        self.config = config
        self.bulk_budget = config.bulk_max_queue_tokens  # the bulk queue's batch size now
        self.configure(config)

    def configure(self, config: BatchingConfig) -> None:
        """Apply new settings; queued jobs keep their place (a new decorator only for a new concurrency)."""
        budgets = {"interactive": config.max_queue_tokens, "bulk": config.bulk_max_queue_tokens}
        new = not self._queues or config.max_concurrent_batches != self.config.max_concurrent_batches
        for lane, budget in budgets.items():
            if new:
                # A bulk text longer than the budget is a part of its own, counted at the budget: it runs alone.
                size = _count_tokens if lane == "interactive" else self._bulk_size
                self._queues[lane] = serve.batch(
                    max_batch_size=budget, batch_wait_timeout_s=config.batch_wait_timeout_s,
                    max_concurrent_batches=config.max_concurrent_batches, batch_size_fn=size,
                )(self._run)
            else:
                self._queues[lane].set_max_batch_size(budget)
                self._queues[lane].set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.config, self.bulk_budget = config, config.bulk_max_queue_tokens
        self._load.lanes = config.scheduling == "priority"
        self._load.bulk_max_wait_s = config.bulk_max_wait_s

    def _bulk_size(self, jobs: list[Job]) -> int:
        return sum(min(job.n_tokens, self.bulk_budget) for job in jobs)

    def _bulk_budget_now(self) -> int:
        """The bulk batch size for a bulk job arriving now: small while queries come, big in a quiet spell."""
        quiet = self.config.bulk_quiet_s and perf_counter() - self._interactive_at > self.config.bulk_quiet_s
        budget = self.config.max_queue_tokens if quiet else self.config.bulk_max_queue_tokens
        if budget != self.bulk_budget:
            self._queues["bulk"].set_max_batch_size(budget)
            self.bulk_budget = budget
        return budget

    async def submit(self, job: Job) -> EncodeResult:
        """Queue `job` and wait for its result; raises its own failure. Cancelling this await drops the job
        if its batch has not started (the runner skips cancelled jobs)."""
        with self._load.queued(job):
            if job.priority == "bulk" and self._load.lanes:
                parts = job.parts(self._bulk_budget_now())
                if len(parts) > 1:
                    return _joined(await asyncio.gather(*(self._one(self._queues["bulk"], p) for p in parts)))
                return await self._one(self._queues["bulk"], job)
            self._interactive_at = perf_counter()
            if self.bulk_budget != self.config.bulk_max_queue_tokens:  # queries again: bulk batches small at once
                self._bulk_budget_now()
            return await self._one(self._queues["interactive"], job)

    @staticmethod
    async def _one(queue: Any, job: Job) -> EncodeResult:
        outcome = await queue(job)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _joined(results: list[EncodeResult]) -> EncodeResult:
    """The parts' results of one job, as the job's: outputs in input order, tokens and batch texts summed."""
    return EncodeResult(
        embeddings=[e for r in results for e in r.embeddings], prompt_tokens=sum(r.prompt_tokens for r in results),
        batch_requests=max(r.batch_requests for r in results), batch_texts=sum(r.batch_texts for r in results),
        timings=Timings(tokenization_ms=results[0].timings.tokenization_ms,
                        queue_ms=max(r.timings.queue_ms for r in results),
                        inference_ms=sum(r.timings.inference_ms for r in results)))
