"""Two lanes to one device: a formed interactive batch goes before every waiting bulk batch, and bulk keeps a
minimum share of the device so a backfill ends.

The coalescer forms batches per lane (a `BatchQueue` each, `coalescer`); before a batch goes to the compute
thread it takes its turn here (`DeviceTurns.turn`). One batch holds the device at a time. When it frees,
the next turn goes to the oldest waiting interactive batch, unless a bulk batch waits and bulk has had less
than `bulk_min_share` of the device's recent time (seconds on the device per lane, decayed with a half-life
of `SHARE_HALF_LIFE_S`): then to the oldest bulk batch. A bulk batch is cut to `bulk_max_queue_tokens`, so
an interactive batch waits behind at most one. With `scheduling: fifo` turns go in arrival order, whatever
the lane (the benchmarks' control). Like TEI's queue, a waiter whose caller left is skipped, never granted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter
from typing import cast

from .schemas import Priority

SHARE_HALF_LIFE_S = 10.0  # how far back "recent" device time reaches: a few batches on CPU, many on GPU


class DeviceTurns:
    """Whose batch goes to the device next: interactive first, bulk its minimum share (`scheduling`,
    `bulk_min_share` are set live from `BatchingConfig`)."""

    def __init__(self) -> None:
        self.scheduling = "priority"
        self.bulk_min_share = 0.1
        self._busy = False
        self._waiting: dict[str, deque[asyncio.Future]] = {"interactive": deque(), "bulk": deque()}
        self._arrival: dict[asyncio.Future, int] = {}  # waiter -> arrival number (fifo order across lanes)
        self._arrivals = 0
        self._used = {"interactive": 0.0, "bulk": 0.0}  # decayed device seconds per lane
        self._used_at = perf_counter()

    @asynccontextmanager
    async def turn(self, lane: Priority) -> AsyncIterator[None]:
        """Hold the device for one batch of `lane` while this block runs; waits for the turn."""
        if self._busy:
            await self._wait(lane)
        else:
            self._busy = True
        started = perf_counter()
        try:
            yield
        finally:
            self._account(lane, perf_counter() - started)
            self._pass_on()

    def bulk_share(self) -> float:
        """Bulk's share of the device's recent time (0 before any batch)."""
        total = self._used["interactive"] + self._used["bulk"]
        return self._used["bulk"] / total if total else 0.0

    async def _wait(self, lane: Priority) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        self._arrival[waiter] = self._arrivals
        self._waiting[lane].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as it was cancelled: hand the device on
                self._pass_on()
            else:
                self._waiting[lane].remove(waiter)
                self._arrival.pop(waiter, None)
            raise

    def _pass_on(self) -> None:
        """The device is free: grant it to the next live waiter, or mark it idle."""
        while (waiter := self._next()) is not None:
            self._arrival.pop(waiter, None)
            if not waiter.done():  # a waiter cancelled while queued is skipped
                waiter.set_result(None)
                return
        self._busy = False

    def _next(self) -> asyncio.Future | None:
        interactive, bulk = self._waiting["interactive"], self._waiting["bulk"]
        if self.scheduling == "fifo":
            heads = [q for q in (interactive, bulk) if q]
            return min(heads, key=lambda q: self._arrival[q[0]]).popleft() if heads else None
        if bulk and (not interactive or self.bulk_share() < self.bulk_min_share):
            return bulk.popleft()
        return interactive.popleft() if interactive else None

    def _account(self, lane: str, seconds: float) -> None:
        now = perf_counter()
        decay = 0.5 ** ((now - self._used_at) / SHARE_HALF_LIFE_S)
        self._used_at = now
        for name in self._used:
            self._used[name] *= decay
        self._used[cast(Priority, lane)] += seconds
