"""The batching queue (`serving.batch_queue`) that the model replica's lanes and the ingress's model calls
use: budgets, arrival order, slots, the fill wait, failures and live settings, with a real event loop and a
batch function that records what it was given."""

from __future__ import annotations

import asyncio
import contextvars

from serve_app.serving.batch_queue import BatchQueue


class Device:
    """A batch function that records each batch and holds it until `release` (when `hold` is set)."""

    def __init__(self, hold: bool = False, fail: bool = False):
        self.batches: list[list[int]] = []
        self.hold, self.fail = hold, fail
        self.gate = asyncio.Event()

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        if self.hold:
            await self.gate.wait()
        if self.fail:
            raise ValueError("device failed")
        return [item * 10 for item in items]


def _size(item: int) -> int:
    return item


def test_items_leave_in_arrival_order_in_batches_within_the_budget_and_a_big_one_alone():
    async def run():
        device = Device()
        queue = BatchQueue(device.run, _size, budget=10, wait_s=0, slots=1)
        futures = queue.put_many([4, 5, 3, 12, 2, 1])
        outcomes = await asyncio.gather(*futures)
        return device.batches, outcomes

    batches, outcomes = asyncio.run(run())
    assert batches == [[4, 5], [3], [12], [2, 1]]  # 3 does not fit after 4+5; 12 > budget leaves alone, in order
    assert outcomes == [40, 50, 30, 120, 20, 10]


def test_items_that_arrive_while_every_slot_is_busy_leave_together_when_one_frees():
    async def run():
        device = Device(hold=True)
        queue = BatchQueue(device.run, _size, budget=100, wait_s=0, slots=1)
        first = queue.put(1)
        await asyncio.sleep(0.01)  # the first batch is on the device
        later = [queue.put(n) for n in (2, 3, 4)]  # one by one, as separate callers
        await asyncio.sleep(0.01)
        held = list(device.batches)
        device.hold = False
        device.gate.set()
        await asyncio.gather(first, *later)
        return held, device.batches

    held, batches = asyncio.run(run())
    assert held == [[1]]  # nothing else was sent while the only slot was busy
    assert batches == [[1], [2, 3, 4]]


def test_two_slots_run_two_batches_at_once():
    async def run():
        device = Device(hold=True)
        queue = BatchQueue(device.run, _size, budget=2, wait_s=0, slots=2)
        futures = queue.put_many([1, 1, 1, 1, 1])
        await asyncio.sleep(0.01)
        running = list(device.batches)
        device.gate.set()
        await asyncio.gather(*futures)
        return running

    assert asyncio.run(run()) == [[1, 1], [1, 1]]


def test_a_batch_waits_for_company_only_while_another_is_out_and_a_full_one_leaves_at_once():
    """The window gathers items while the device is busy; a request reaching an idle queue (a lone query on an
    idle replica) goes at once instead of paying the whole window."""
    async def run():
        device = Device(hold=True)
        queue = BatchQueue(device.run, _size, budget=3, wait_s=0.2, slots=2)
        loop = asyncio.get_running_loop()
        lone = queue.put(1)  # idle queue: no wait
        await asyncio.sleep(0.02)
        left_at_once = list(device.batches)
        started = loop.time()
        waiting = queue.put(1)  # a batch is out: waits up to 0.2 s for company
        await asyncio.sleep(0.05)
        company = queue.put(1)
        while len(device.batches) < 2:
            await asyncio.sleep(0.01)
        waited = loop.time() - started
        full = queue.put_many([1, 2])  # fills the budget: leaves as soon as a slot frees, no window
        device.gate.set()
        released = loop.time()
        await asyncio.gather(lone, waiting, company, *full)
        return left_at_once, device.batches, waited, loop.time() - released

    left_at_once, batches, waited, full = asyncio.run(run())
    assert left_at_once == [[1]]
    assert batches == [[1], [1, 1], [1, 2]]
    assert 0.15 <= waited < 1.0 and full < 0.1


def test_a_failed_batch_gives_every_item_the_failure_and_the_queue_goes_on():
    async def run():
        device = Device(fail=True)
        queue = BatchQueue(device.run, _size, budget=10, wait_s=0, slots=1)
        failed = await asyncio.gather(*queue.put_many([1, 2]))
        device.fail = False
        return failed, await queue.put(3)

    failed, after = asyncio.run(run())
    assert [type(o) for o in failed] == [ValueError, ValueError] and after == 30


def test_a_cancelled_future_leaves_the_others_answered_and_a_new_budget_applies_to_the_next_batch():
    async def run():
        device = Device(hold=True)
        queue = BatchQueue(device.run, _size, budget=10, wait_s=0, slots=1)
        first = queue.put(1)
        await asyncio.sleep(0.01)
        gone, kept, more = queue.put_many([2, 3, 4])
        gone.cancel()  # its caller left: the batch function still gets it and decides
        queue.budget = 7
        device.hold = False
        device.gate.set()
        return await asyncio.gather(first, kept, more), device.batches

    outcomes, batches = asyncio.run(run())
    assert outcomes == [10, 30, 40] and batches == [[1], [2, 3], [4]]


def test_batches_run_outside_the_context_of_the_caller_whose_item_started_them():
    """A task copies the context it is created in: batches once ran in the context of the first caller to put
    an item, so that caller's request-scoped state (in Ray Serve: calls made in a request's context are
    cancelled with it) reached every later caller's batch, and one caller that left hung an ingress."""
    caller = contextvars.ContextVar("caller", default=None)
    seen: list[object] = []

    async def run_batch(items: list[int]) -> list[int]:
        seen.append(caller.get())
        return items

    async def run():
        queue = BatchQueue(run_batch, _size, budget=1, wait_s=0, slots=1)

        async def put_as(name: str, item: int) -> int:
            caller.set(name)
            return await queue.put(item)

        return await asyncio.gather(put_as("first", 1), put_as("second", 1), put_as("third", 1))

    assert asyncio.run(run()) == [1, 1, 1]
    assert seen == [None, None, None]


def test_a_batch_function_that_returns_the_wrong_number_of_outcomes_fails_every_item_instead_of_hanging():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def run():
        queue = BatchQueue(short, _size, budget=10, wait_s=0, slots=1)
        return await asyncio.wait_for(asyncio.gather(*queue.put_many([1, 2, 3])), 5)

    outcomes = asyncio.run(run())
    assert len(outcomes) == 3 and all(isinstance(o, RuntimeError) and "2 outcomes for 3" in str(o) for o in outcomes)
