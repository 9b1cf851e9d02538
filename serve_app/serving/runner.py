"""The device side of the model replica: one thread owns the device, and each batch of jobs the coalescer
forms runs there as one encoder call, in priority order (`lanes.DeviceTurns`: interactive first).

The call computes the union of the jobs' outputs, off the event loop so the next batch keeps filling; each
job then gets only its own inputs and outputs. If the call fails, each job runs alone, so only the one that
cannot run fails. A job past its deadline (wall clock: the caller may be another process or node) or
cancelled is never computed: it is dropped when its batch reaches the runner, and again on the compute
thread right before the encoder call, since a batch formed while another computes may wait there. A batch
already on the device runs to its end: a forward pass cannot drop rows midway, so the vectors of a job
cancelled then are computed and discarded. The compute thread keeps a heartbeat (`health.ComputeMonitor`)
so the health probe never queues behind batches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import perf_counter
from typing import TypeVar

from ..core.encoder import Encoder
from ..core.errors import RequestTimeoutError
from ..core.inputs import EncodeOptions
from ..core.outputs import Embedding
from .admission import DeviceLoad
from .health import ComputeMonitor
from .job import Job, lane_of
from .lanes import DeviceTurns
from .metrics import ReplicaStats
from .schemas import EncodeResult, Timings

T = TypeVar("T")
Outcome = EncodeResult | Exception  # one job's answer: its result, or its own failure


class DeviceRunner:
    """Runs batches of jobs on the one thread that owns `encoder`'s device."""

    def __init__(self, encoder: Encoder, load: DeviceLoad, stats: ReplicaStats):
        self._encoder, self._load, self._stats = encoder, load, stats
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-compute")
        self.turns = DeviceTurns()
        self.monitor = ComputeMonitor()
        encoder.on_layer_done(self.monitor.beat)

    async def on_device(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the compute thread, counted and stamped by the heartbeat."""
        self.monitor.submitted += 1
        return await asyncio.get_running_loop().run_in_executor(self._compute, self.monitor.run, fn)

    async def run(self, jobs: list[Job]) -> list[Outcome]:
        """Each job's outcome, in order: computed together (each alone if that fails), or
        `RequestTimeoutError` for a job dropped past its deadline (a cancelled job's answer is never read)."""
        ready = perf_counter()  # the batch is formed: from here (or the last batch's end) the device owes it
        lane = lane_of(jobs)
        done: dict[Job, Outcome] = {}
        async with self.turns.turn(lane):  # waits while a batch of higher priority goes first
            started = perf_counter()
            self._stats.waited(jobs, started)  # once per job, even when its batch is retried below
            now = time.time()
            live = [job for job in jobs if not job.dropped(now)]  # reaching the device: dropped jobs stay out
            self._stats.expired(sum(not job.cancelled for job in jobs if job not in live))
            try:
                done.update(zip(live, await self._together(live, started, ready), strict=True))
            except Exception as exc:
                if len(live) == 1:
                    done[live[0]] = exc
                else:
                    for job in live:  # each alone: only the one that cannot run fails
                        try:
                            [done[job]] = await self._together([job], perf_counter(), perf_counter())
                        except Exception as own:
                            done[job] = own
        return [done.get(job, RequestTimeoutError()) for job in jobs]

    async def _together(self, jobs: list[Job], started: float, ready: float) -> list[Outcome]:
        """One encoder call for those of `jobs` still live on the compute thread, with the union of their
        outputs; each job gets only its own, the others `RequestTimeoutError`."""
        if not jobs:
            return []
        computed, embeddings = await self.on_device(partial(self._compute_live, jobs, ready))
        self._stats.expired(sum(not job.cancelled for job in jobs if job not in computed))
        if not computed:
            return [RequestTimeoutError() for _ in jobs]
        inference_ms = (perf_counter() - started) * 1e3
        n_texts = sum(len(job.tokens) for job in computed)
        self._stats.computed(computed, inference_ms)
        outcomes: list[Outcome] = []
        offset, kept = 0, set(computed)
        for job in jobs:
            if job not in kept:
                outcomes.append(RequestTimeoutError())
                continue
            own = embeddings[offset: offset + len(job.tokens)]
            offset += len(job.tokens)
            if job.windows is not None:
                own = self._encoder.merge_windows(own, job.windows)
            for embedding in own:  # each Embedding belongs to exactly one job, so trimming in place is safe
                embedding.keep_only(job.options)
            outcomes.append(EncodeResult(
                embeddings=own, prompt_tokens=job.n_tokens, batch_requests=len(computed), batch_texts=n_texts,
                timings=Timings(tokenization_ms=job.tokenization_ms, queue_ms=(started - job.enqueued_at) * 1e3,
                                inference_ms=inference_ms)))
        return outcomes

    def _compute_live(self, jobs: list[Job], ready: float) -> tuple[list[Job], list[Embedding]]:
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
        flat = [t for job in live for t in job.tokens]  # on the device from here, no longer queued
        with self._load.computing(sum(t.n_tokens for t in flat), lane_of(live), ready):
            embeddings = self._encoder.encode_tokens(flat, union)
        self.monitor.check_outputs(embeddings)
        return live, embeddings
