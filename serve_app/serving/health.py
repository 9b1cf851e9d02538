"""The model replica's health, judged without queueing behind work.

Serve probes a replica every `health_check_period_s` and kills it after three probes in a row fail or
take longer than `health_check_timeout_s`. A probe that encoded on the compute thread would wait behind
up to `max_concurrent_batches` batches, and on a CPU a full batch of the full-size model outlasts that
timeout: a busy, healthy replica would be killed. So the compute thread keeps a heartbeat instead
(`ComputeMonitor`), and the verdict is:

- busy: unhealthy only when the running compute step has made no progress for longer than
  `BatchingConfig.stall_timeout_s` (the device is stuck), or when the last batch's vectors were unusable;
- idle: a real one-text encode, first in line on the compute thread, whose vector must be usable.

Progress is a finished transformer layer (`Encoder.on_layer_done`), not a finished batch: a batch's time
grows with its tokens and differs by orders of magnitude between devices (a 16,384-token batch of the
full-size model takes minutes on a 2-core CPU: docs/reliability.md), while one layer of one forward pass
is bounded by `max_forward_tokens`, so the limit need not follow the queue budget.

A vector is unusable when it has NaN/inf values or is all zeros: a model producing them (an fp16
overflow, a damaged device) answers every request with garbage, which is worse than no answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..core.outputs import Embedding

if TYPE_CHECKING:
    from ..core.encoder import Encoder

T = TypeVar("T")


def unusable(vector: np.ndarray | None) -> str | None:
    """What is wrong with a dense vector (or rows of them), in words; None when it is usable."""
    if vector is None:
        return "no dense output"
    if not np.isfinite(vector).all():
        return "non-finite values"
    return None if np.atleast_2d(vector).any(axis=-1).all() else "all zeros"


class ComputeMonitor:
    """The compute thread's heartbeat and the verdict on its last outputs.

    Each field has one writer, so no lock is needed: the event loop counts steps handed to the thread
    (`submitted`); the thread counts those it finished (`finished`), stamps the one it runs and beats as
    it progresses (`beat`).
    """

    def __init__(self) -> None:
        self.submitted = 0
        self.finished = 0
        self._running = False
        self._last_beat = time.monotonic()  # start of the running step, or its last progress
        self.busy_s = 0.0  # total time in steps
        # CPU seconds of this thread in steps (`time.thread_time`: torch's own worker threads not included): the
        # host CPU of the device work, which the rest of the replica's CPU is measured against.
        self.cpu_s = 0.0
        self.longest_step_s = 0.0
        self.longest_quiet_s = 0.0  # the longest time without progress: what the stall limit must exceed
        self.last_outputs_problem: str | None = None  # `unusable()` of the last checked batch

    @property
    def idle(self) -> bool:
        """Nothing running or waiting on the compute thread (read on the event loop)."""
        return self.submitted == self.finished

    def quiet_for(self) -> float:
        """Seconds the running step has gone without progress (0 between steps)."""
        return time.monotonic() - self._last_beat if self._running else 0.0

    def beat(self) -> None:
        """Progress inside the running step (a transformer layer finished); called on the compute thread."""
        now = time.monotonic()
        self.longest_quiet_s = max(self.longest_quiet_s, now - self._last_beat)
        self._last_beat = now

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one compute step on the compute thread, stamped (the caller counted it in `submitted`)."""
        self._last_beat = started = time.monotonic()
        cpu_started = time.thread_time()
        self._running = True
        try:
            return fn(*args)
        finally:
            self.beat()
            self._running = False
            took = time.monotonic() - started
            self.busy_s += took
            self.cpu_s += time.thread_time() - cpu_started
            self.longest_step_s = max(self.longest_step_s, took)
            self.finished += 1

    def describe(self) -> dict:
        """Steps run, their total seconds and this thread's CPU seconds in them, the longest step, the longest
        time without progress, the current quiet."""
        return {"steps": self.finished, "busy_s": round(self.busy_s, 3), "cpu_s": round(self.cpu_s, 4),
                "longest_step_s": round(self.longest_step_s, 3),
                "longest_quiet_s": round(self.longest_quiet_s, 3), "quiet_for_s": round(self.quiet_for(), 3)}

    def check_outputs(self, embeddings: Sequence[Embedding]) -> None:
        """Judge a batch's dense vectors (when it computed them): the verdict the busy probe reports."""
        dense = [e.dense for e in embeddings if e.dense is not None]
        if dense:
            self.last_outputs_problem = unusable(np.stack(dense))


class HealthProbe:
    """Serve's probe of one replica, answered without waiting behind batches: `check` raises when the running
    compute step has made no progress for `stall_timeout_s` or the last batch's vectors were unusable; when
    the device is idle, it runs a real one-text encode (first in line: `on_device`) and raises on an unusable
    vector."""

    def __init__(self, encoder: Encoder, monitor: ComputeMonitor,
                 on_device: Callable[[Callable[[], list[Embedding]]], Awaitable[list[Embedding]]]):
        self._encoder, self._monitor, self._on_device = encoder, monitor, on_device

    async def check(self, stall_timeout_s: float) -> None:
        """Raise (the replica is unhealthy) with the reason, or return (healthy)."""
        if self._monitor.idle:
            [out] = await self._on_device(partial(self._encoder.encode, ["health check"], dense=True, sparse=False))
            problem = unusable(out.dense)
        else:
            quiet = self._monitor.quiet_for()
            if quiet > stall_timeout_s:
                raise RuntimeError(f"compute stalled: no transformer layer finished for {quiet:.0f} s, more "
                                   f"than user_config.stall_timeout_s ({stall_timeout_s:g} s)")
            problem = self._monitor.last_outputs_problem
        if problem is not None:
            raise RuntimeError(f"encoder returned an unusable vector ({problem})")
