"""The model replica's coalescer: concurrent jobs gathered, by real tokens, into batches for the device, one
queue per lane.

A `BatchQueue` per lane (every knob from `BatchingConfig`, live) gathers jobs up to a token budget, or, while
another batch is out, what arrives within `batch_wait_timeout_s` (a job reaching an idle queue goes at once),
and hands each batch to the device runner, which runs formed batches in priority order (`lanes`); up to
`max_concurrent_batches` batches per lane are formed ahead of the device.
The interactive queue's budget is `max_queue_tokens`; the bulk queue's is `bulk_max_queue_tokens`, smaller,
so a query waits behind at most one bulk batch: a bulk job longer than that is cut between its inputs into
parts queued alone and answered together. While no interactive request has come for `bulk_quiet_s`, the
bulk budget is `max_queue_tokens` (a backfill alone runs in big batches, as fast as it can; the first query
after the quiet waits behind one of them). With `scheduling: fifo` every job takes the interactive queue, in
arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter

from .admission import DeviceLoad
from .batch_queue import BatchQueue
from .config import BatchingConfig
from .job import Job
from .schemas import EncodeResult, Timings

Outcome = EncodeResult | Exception  # a job's answer: its result, or its own failure
RunBatch = Callable[[list[Job]], Awaitable[list[Outcome]]]


def _count_tokens(job: Job) -> int:
    """A job's size in a batch: real tokens, not requests."""
    return job.n_tokens


class Coalescer:
    """Batches of jobs for `run` (the device runner), each job counted in `load` until answered."""

    def __init__(self, run: RunBatch, load: DeviceLoad, config: BatchingConfig):
        self._load = load
        self._interactive_at = float("-inf")  # when the last interactive job came (`perf_counter`)
        self.config = config
        # A bulk text longer than the budget is a part of its own, counted at the budget: it runs alone.
        self._queues: dict[str, BatchQueue[Job]] = {
            "interactive": BatchQueue(run, _count_tokens, config.max_queue_tokens, config.batch_wait_timeout_s,
                                      config.max_concurrent_batches),
            "bulk": BatchQueue(run, self._bulk_size, config.bulk_max_queue_tokens, config.batch_wait_timeout_s,
                               config.max_concurrent_batches)}
        self.configure(config)

    @property
    def bulk_budget(self) -> int:
        """The bulk queue's batch size now."""
        return self._queues["bulk"].budget

    def configure(self, config: BatchingConfig) -> None:
        """Apply new settings at once; queued jobs keep their place."""
        budgets = {"interactive": config.max_queue_tokens, "bulk": config.bulk_max_queue_tokens}
        for lane, queue in self._queues.items():
            queue.budget, queue.wait_s = budgets[lane], config.batch_wait_timeout_s
            queue.slots = config.max_concurrent_batches
        self.config = config
        self._load.lanes = config.scheduling == "priority"
        self._load.bulk_max_wait_s = config.bulk_max_wait_s

    def _bulk_size(self, job: Job) -> int:
        return min(job.n_tokens, self.bulk_budget)

    def _bulk_budget_now(self) -> int:
        """The bulk batch size for a bulk job arriving now: small while queries come, big in a quiet spell."""
        quiet = self.config.bulk_quiet_s and perf_counter() - self._interactive_at > self.config.bulk_quiet_s
        budget = self.config.max_queue_tokens if quiet else self.config.bulk_max_queue_tokens
        self._queues["bulk"].budget = budget
        return budget

    def submit(self, job: Job) -> asyncio.Future:
        """Queue `job`; the future's result is its outcome (`EncodeResult`, or its own failure as a value).
        Cancelling the future stops counting the job as queued; the job itself is dropped before its batch
        runs once it is past its deadline or marked `cancelled`."""
        if job.priority == "bulk" and self._load.lanes:
            parts = job.parts(self._bulk_budget_now())
            answered = (self._queues["bulk"].put(job) if len(parts) == 1
                        else _joined(self._queues["bulk"].put_many(parts)))
        else:
            self._interactive_at = perf_counter()
            if self.bulk_budget != self.config.bulk_max_queue_tokens:  # queries again: bulk batches small at once
                self._bulk_budget_now()
            answered = self._queues["interactive"].put(job)
        self._load.queued(job, answered)
        return answered


def _joined(parts: list[asyncio.Future]) -> asyncio.Future:
    """One future for a job cut into `parts`: the first part's failure, or the parts' results as the job's
    (outputs in input order, tokens and batch texts summed)."""
    joined = asyncio.get_running_loop().create_future()
    left = len(parts)

    def part_done(_: asyncio.Future) -> None:
        nonlocal left
        left -= 1
        if left or joined.done():
            return
        results = [part.result() for part in parts]
        failed = next((r for r in results if isinstance(r, Exception)), None)
        joined.set_result(failed if failed is not None else EncodeResult(
            embeddings=[e for r in results for e in r.embeddings], prompt_tokens=sum(r.prompt_tokens for r in results),
            batch_requests=max(r.batch_requests for r in results), batch_texts=sum(r.batch_texts for r in results),
            timings=Timings(tokenization_ms=results[0].timings.tokenization_ms,
                            queue_ms=max(r.timings.queue_ms for r in results),
                            inference_ms=sum(r.timings.inference_ms for r in results))))

    for part in parts:
        part.add_done_callback(part_done)
    return joined
