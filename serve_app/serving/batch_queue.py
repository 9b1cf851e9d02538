"""A batching queue: items put one by one (or a call's many at once) leave in batches of at most `budget`
(counted by `size`), each run by an async function that returns one outcome per item.

What `@serve.batch` did for the model replica's lanes and the ingress's model calls, at a fixed cost per
item (a task and a re-flattening of the arguments per item, the whole forming batch re-sized on each
arrival): replacing it, and the per-request tasks around it, cut the model replica's CPU outside the
forward pass by ~10% per one-text request at c=64 and ~35% at c=256 (docs/benchmarks.md, "Host CPU per
request"). Here `put` returns a plain future, with no task per item, and a batch forms only
when one of its `slots` is free: under load the items that came while every slot was busy leave together,
in arrival order (an item that does not fit the budget starts the next batch, it is never sent behind
later ones).

Fields, all live (read at each use, so `configure` applies at once):
- `budget`: the most a batch holds, summed over `size(item)`; an item bigger than that leaves alone.
- `wait_s`: while another batch of this queue is out (running, or waiting for the device), how long the
  next one waits for more items while it is not full. A batch forming at an idle queue leaves at once: a
  lone request on an idle replica would otherwise pay the whole window for company that is not coming
  (under load a batch is nearly always out, so the window still gathers).
- `slots`: batches running at once; the next one forms when one ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .request_scope import detached_task

Item = TypeVar("Item")
RunBatch = Callable[[list[Item]], Awaitable[Sequence[object]]]


class BatchQueue(Generic[Item]):
    """Items in, batches out to `run`; each item's future gets its outcome (`run`'s failure: every item's)."""

    def __init__(self, run: RunBatch, size: Callable[[Item], int], budget: int, wait_s: float, slots: int):
        self._run, self._size = run, size
        self.budget, self.wait_s, self.slots = budget, wait_s, slots
        self._items: deque[tuple[Item, asyncio.Future, int]] = deque()  # (item, its future, its size)
        self._queued = 0  # the sizes of the items waiting, summed
        self._running = 0  # batches handed to `run` and not yet done
        self._changed: asyncio.Future | None = None  # what `_form` waits on: an item came, or a batch ended
        self._former: asyncio.Task | None = None
        self._batches: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> asyncio.Future:
        """Queue `item`; its future's result is its outcome. Cancelling the future does not unqueue the item
        (`run` decides what to do with items nobody waits for)."""
        [future] = self.put_many([item])
        return future

    def put_many(self, items: Sequence[Item]) -> list[asyncio.Future]:
        """`put` of each item, in order, waking the batch former once."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        sizes = [self._size(item) for item in items]
        self._items.extend(zip(items, futures, sizes))
        self._queued += sum(sizes)
        self._wake()
        return futures

    def _wake(self) -> None:
        if self._items and (self._former is None or self._former.done()):
            self._former = detached_task(self._form())
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def _until_changed(self, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._changed = changed = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _settle, changed)
        try:
            await changed
        finally:
            if timer is not None:
                timer.cancel()

    async def _form(self) -> None:
        """Form batches while items wait: fill one while another is out (up to `budget`, or for `wait_s`),
        wait for a free slot, then take what fits."""
        loop = asyncio.get_running_loop()
        while self._items:
            if self.wait_s > 0 and self._running and self._queued < self.budget:
                ends = loop.time() + self.wait_s
                while self._queued < self.budget and (left := ends - loop.time()) > 0:
                    await self._until_changed(left)
            while self._running >= self.slots:
                await self._until_changed()
            batch = self._take()
            self._running += 1
            task = detached_task(self._run_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _take(self) -> list[tuple[Item, asyncio.Future]]:
        """The items of the next batch, oldest first: at least one, then as many as fit the budget."""
        item, future, total = self._items.popleft()
        batch = [(item, future)]
        while self._items and total + self._items[0][2] <= self.budget:
            item, future, size = self._items.popleft()
            batch.append((item, future))
            total += size
        self._queued -= total
        return batch

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            try:
                outcomes: Sequence[object] = await self._run([item for item, _ in batch])
            except Exception as exc:  # the batch itself failed: every item gets its failure
                outcomes = [exc] * len(batch)
            if len(outcomes) != len(batch):
                outcomes = [RuntimeError(f"the batch function gave {len(outcomes)} outcomes for {len(batch)} "
                                         "items")] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            for _, future in batch:  # never a caller left waiting, whatever ended the batch
                if not future.done():
                    future.set_result(RuntimeError("the batch ended without an outcome for this item"))
            self._running -= 1
            self._wake()


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
