"""Admission by cost: a request the device cannot finish by its deadline is refused on arrival.

The model replica knows the real tokens queued for its device (`DeviceLoad.backlog_tokens`, less what the
batch on the device has already computed: `tokens_ahead`) and how fast the device has computed lately
(`DeviceSpeed`: real tokens per second of compute, a moving average over recent batches, so padding and
batch sizes of the current load are in it). A request with a deadline
whose expected finish (everything queued ahead plus its own tokens, at that speed) lies past its deadline
is refused at once with `WouldMissDeadlineError` (HTTP 429, `Retry-After` the time the queue ahead needs
to drain) instead of waiting to time out: the requests that are admitted finish in time, and no computing
goes to answers nobody receives. TEI's queue admits by tokens in the same spirit. "Expected" keeps a
margin (`DEADLINE_SHARE`): under sustained overload the queue fills up to the deadline, so the last request
admitted always sits at the edge, and a speed a few percent slower than the average (padding, other
processes on the host) would turn it into a 504 after all its work (measured: docs/reliability.md,
"Goodput under overload").

A request with nothing queued ahead of it is admitted unless it alone would take more than
`ALONE_SLACK` times the time left to its deadline: then it is refused with `DeadlineTooShortError` (HTTP
413: retrying will not help; split it or give it more time). The slack is wide on purpose: the speed is
only measured on batches that run, and per token it depends on the texts' length, so an estimate made
on other texts (or during a stall) must not refuse a request that might make it; an admitted request
refreshes the estimate. Until a first batch has been measured everything is admitted, and requests
without a deadline (Python handle callers that set neither `deadline` nor `timeout_s`) are never refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from time import perf_counter

from ..core.errors import BulkBacklogError, DeadlineTooShortError, WouldMissDeadlineError
from .job import Job

ALONE_SLACK = 2.0  # with nothing queued ahead, refuse only a request expected to take 2x the time it has
DEADLINE_SHARE = 0.85  # behind a queue, admit what is expected to finish within 85% of the time it has left
SPEED_WEIGHT = 0.3  # weight of the newest batch in the moving average: a few batches follow a change of load
COLD_LOAD_SHARE = 0.5  # of the idle speed, expected of a queue before any batch has run with one


class DeviceSpeed:
    """Recent real tokens per second this replica's device achieves: over every batch (`tokens_per_s`), and
    over the batches that ran with work waiting behind them (`loaded_tokens_per_s`), the speed a queue drains
    at. They differ where the host is shared: under a storm of requests the proxy, ingress and refusals take
    CPU the device's thread needs (measured: half the idle speed, docs/reliability.md "A retry storm")."""

    def __init__(self) -> None:
        self.tokens_per_s: float | None = None
        self.loaded_tokens_per_s: float | None = None

    def record(self, tokens: int, seconds: float, loaded: bool = False) -> None:
        """One batch's real tokens and the seconds it took; `loaded`: other work waited behind it."""
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        self.tokens_per_s = _averaged(self.tokens_per_s, rate)
        if loaded:
            self.loaded_tokens_per_s = _averaged(self.loaded_tokens_per_s, rate)

    def draining(self) -> float | None:
        """The speed a queue is expected to drain at: the loaded one; before any batch ran loaded, a share
        (`COLD_LOAD_SHARE`) of the idle one, so the first burst is not admitted at a speed it will not get."""
        if self.loaded_tokens_per_s is not None:
            return self.loaded_tokens_per_s
        return None if self.tokens_per_s is None else COLD_LOAD_SHARE * self.tokens_per_s


def _averaged(average: float | None, rate: float) -> float:
    return rate if average is None else SPEED_WEIGHT * rate + (1 - SPEED_WEIGHT) * average


def tokens_ahead(backlog_tokens: int, on_device_tokens: int, on_device_s: float, tokens_per_s: float | None) -> float:
    """Real tokens still to compute before a request arriving now: the backlog, less the part of the batch on
    the device that its `on_device_s` there has computed at `tokens_per_s` (at most all of it). Without
    this, a request arriving near the end of a long batch would be charged the whole batch again."""
    if not on_device_tokens or not tokens_per_s:
        return backlog_tokens
    return backlog_tokens - min(on_device_tokens, on_device_s * tokens_per_s)


def refusal(own_tokens: int, deadline: float | None, now: float, queued_tokens: float,
            tokens_per_s: float | None) -> WouldMissDeadlineError | DeadlineTooShortError | None:
    """The error refusing a request of `own_tokens` behind `queued_tokens` at `tokens_per_s`, or None to admit
    it: admitted when it has no deadline, no speed is known yet, or it is expected to finish well before
    `deadline` (wall clock, as `now`; within `DEADLINE_SHARE` of the time left); with nothing queued ahead,
    unless it alone needs `ALONE_SLACK` x the time left."""
    if deadline is None or not tokens_per_s:
        return None
    remaining_s = deadline - now
    if queued_tokens <= 0:
        alone_s = own_tokens / tokens_per_s
        return DeadlineTooShortError(alone_s, remaining_s) if alone_s > ALONE_SLACK * remaining_s else None
    expected_s = (queued_tokens + own_tokens) / tokens_per_s
    if expected_s <= DEADLINE_SHARE * remaining_s:
        return None
    return WouldMissDeadlineError(expected_s, remaining_s, retry_after_s=max(1.0, queued_tokens / tokens_per_s))


class DeviceLoad:
    """What this replica's device has to do and how fast it does it: the real tokens submitted and not yet
    answered, per lane (`backlog`), those of the batch on the device now (its lane, since when), and its
    recent speed. Admission reads it (`refusal`), and so does autoscaling (`queued_tokens`). The coalescer
    counts what it queues (`queued`), the runner what runs (`computing`).

    With the lanes on (`lanes`: `scheduling: priority`), an interactive request counts only the interactive
    work ahead of it and the bulk batch on the device (it goes before every other bulk batch); a bulk request
    counts everything, and is also refused when that would keep it waiting past `bulk_max_wait_s`: under
    load bulk is refused first. With `fifo` every request counts everything, as one queue."""

    def __init__(self) -> None:
        self.speed = DeviceSpeed()
        self.backlog: dict[str, int] = {"interactive": 0, "bulk": 0}
        self.lanes = True
        self.bulk_max_wait_s = 10.0
        self._computing_tokens, self._computing_since, self._computing_lane = 0, 0.0, "interactive"
        self._last_end = float("-inf")  # when the last batch left the device (perf_counter)

    @property
    def backlog_tokens(self) -> int:
        """Real tokens submitted and not yet answered, both lanes."""
        return self.backlog["interactive"] + self.backlog["bulk"]

    def queued(self, job: Job, answered: asyncio.Future) -> None:
        """`job` counts in its lane's backlog until `answered` is done (answered, failed or cancelled)."""
        self.backlog[job.priority] += job.n_tokens
        answered.add_done_callback(lambda _: self._unqueue(job))

    def _unqueue(self, job: Job) -> None:
        self.backlog[job.priority] -= job.n_tokens

    @contextmanager
    def computing(self, tokens: int, lane: str = "interactive", ready: float | None = None) -> Iterator[None]:
        """`tokens` of `lane` are on the device while this block runs (on the compute thread); a block that
        ends normally teaches the speed: its tokens over the time since the batch was `ready` (formed), or
        since the last batch ended if it was ready before. So the speed is the one achieved, host work
        between batches included: under a storm of refused requests that work grows, and admission must
        expect the slower rate it causes, not the forward pass's alone (docs/reliability.md)."""
        # The start is stamped before the tokens: the event loop reads both while this thread writes them.
        self._computing_since = started = perf_counter()
        self._computing_lane = lane
        self._computing_tokens = tokens
        try:
            yield
            ended = perf_counter()
            since = started if ready is None else max(ready, min(self._last_end, started))
            self.speed.record(tokens, ended - since, loaded=self.backlog_tokens > tokens)
            self._last_end = ended
        finally:
            self._computing_tokens = 0

    def queued_tokens(self, lane: str) -> int:
        """Real tokens of `lane` submitted and not yet on the device, the autoscaling signal: work arriving
        faster than the device computes it. One caller at a time queues nothing, however long its texts."""
        on_device = self._computing_tokens if self._computing_lane == lane else 0
        return max(self.backlog[lane] - on_device, 0)

    def refusal(self, job: Job, now: float,
                ahead: Mapping[str, int] | None = None) -> WouldMissDeadlineError | DeadlineTooShortError | None:
        """The error refusing `job` on arrival at wall-clock `now`, or None to queue it; `ahead` counts tokens
        per lane admitted with it but not yet submitted."""
        return self._judge(job.priority, job.n_tokens, job.deadline, now, self._queued_ahead(job.priority, ahead))

    def refusal_unseen(self, priority: str, deadline: float | None,
                       now: float) -> WouldMissDeadlineError | DeadlineTooShortError | None:
        """The refusal the work queued ahead decides alone, before a request is looked up or tokenized (its own
        tokens unknown, counted as none): a storm of requests the device cannot serve is then refused for
        the price of a clock read, not of a tokenizer call each. None when it needs its own tokens judged."""
        queued = self._queued_ahead(priority, None)
        return self._judge(priority, 0, deadline, now, queued) if queued > 0 else None

    def _queued_ahead(self, priority: str, ahead: Mapping[str, int] | None) -> float:
        """Real tokens the device computes before a request of `priority` arriving now: the lanes it waits
        behind, less what the batch on the device has done; plus `ahead`, admitted with it."""
        computing, since = self._computing_tokens, self._computing_since
        ahead = ahead or {}
        backlog, before = self.backlog_tokens, sum(ahead.values())
        if self.lanes and priority == "interactive":  # bulk waits behind it, but for the batch on the device
            backlog = self.backlog["interactive"] + (computing if self._computing_lane == "bulk" else 0)
            before = ahead.get("interactive", 0)
        return tokens_ahead(backlog, computing, perf_counter() - since, self.speed.tokens_per_s) + before

    def _judge(self, priority: str, own_tokens: int, deadline: float | None, now: float,
               queued: float) -> WouldMissDeadlineError | DeadlineTooShortError | None:
        # Behind a queue, the speed a queue drains at; alone, the device's own (`DeviceSpeed`).
        speed = self.speed.draining() if queued > 0 else self.speed.tokens_per_s
        if priority == "bulk" and speed and queued / speed > self.bulk_max_wait_s:
            wait_s = queued / speed
            return BulkBacklogError(wait_s, self.bulk_max_wait_s, retry_after_s=max(1.0, wait_s - self.bulk_max_wait_s))
        return refusal(own_tokens, deadline, now, queued, speed)
