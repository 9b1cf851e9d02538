"""The model replica's two lanes without Serve: whose batch takes the device next (`lanes.DeviceTurns`), how
a bulk job is cut to the bulk batch budget (`Job.parts`), admission per lane (`DeviceLoad.refusal`) and the
autoscaling weight of queued bulk tokens."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.core.errors import BulkBacklogError, WouldMissDeadlineError
from serve_app.core.inputs import EncodeOptions, TokenizedText
from serve_app.serving.admission import DeviceLoad
from serve_app.serving.autoscaling import QUEUED_BULK_TOKENS_METRIC, QUEUED_TOKENS_METRIC, QueuedTokensPolicy
from serve_app.serving.job import Job
from serve_app.serving.lanes import DeviceTurns
from tests.test_autoscaling import _context


async def _run_in_turn(turns: DeviceTurns, lane: str, name: str, order: list[str], hold: asyncio.Event | None = None,
                       seconds: float = 0.0) -> None:
    async with turns.turn(lane):  # type: ignore[arg-type]
        order.append(name)
        if hold is not None:
            await hold.wait()
        if seconds:
            await asyncio.sleep(seconds)  # the device's time, as the compute thread spends it off the event loop


async def _queue_behind_a_held_batch(turns: DeviceTurns, arrivals: list[tuple[str, str]]) -> list[str]:
    """Hold the device with a bulk batch, queue `arrivals` (lane, name) in that order, release: the order of turns."""
    order: list[str] = []
    hold = asyncio.Event()
    tasks = [asyncio.ensure_future(_run_in_turn(turns, "bulk", "on device", order, hold))]
    await asyncio.sleep(0)
    for lane, name in arrivals:
        tasks.append(asyncio.ensure_future(_run_in_turn(turns, lane, name, order)))
        await asyncio.sleep(0)
    hold.set()
    await asyncio.gather(*tasks)
    return order


def test_an_interactive_batch_that_arrives_behind_waiting_bulk_batches_goes_first():
    turns = DeviceTurns()
    turns.bulk_min_share = 0.0
    order = asyncio.run(_queue_behind_a_held_batch(
        turns, [("bulk", "bulk 1"), ("bulk", "bulk 2"), ("interactive", "query 1"), ("interactive", "query 2")]))
    assert order == ["on device", "query 1", "query 2", "bulk 1", "bulk 2"]


def test_with_fifo_scheduling_batches_take_the_device_in_arrival_order():
    turns = DeviceTurns()
    turns.scheduling = "fifo"
    order = asyncio.run(_queue_behind_a_held_batch(
        turns, [("bulk", "bulk 1"), ("interactive", "query 1"), ("bulk", "bulk 2")]))
    assert order == ["on device", "bulk 1", "query 1", "bulk 2"]


def test_a_waiting_batch_whose_caller_left_is_skipped_and_the_device_goes_on():
    async def scenario() -> list[str]:
        turns, order, hold = DeviceTurns(), [], asyncio.Event()
        first = asyncio.ensure_future(_run_in_turn(turns, "interactive", "on device", order, hold))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(_run_in_turn(turns, "interactive", "gone", order))
        kept = asyncio.ensure_future(_run_in_turn(turns, "bulk", "kept", order))
        await asyncio.sleep(0)
        gone.cancel()
        hold.set()
        await asyncio.gather(first, kept)
        assert gone.cancelled()
        return order

    assert asyncio.run(scenario()) == ["on device", "kept"]


def test_bulk_gets_its_minimum_share_of_the_device_under_sustained_interactive_load():
    async def scenario(min_share: float) -> float:
        turns, order = DeviceTurns(), []
        turns.bulk_min_share = min_share
        # Always a query waiting (4 callers, back to back) and always a bulk batch waiting: 1 s of device time.
        async def caller(lane: str) -> None:
            while time.perf_counter() < end:
                await _run_in_turn(turns, lane, lane, order, seconds=0.01)

        end = time.perf_counter() + 1.0
        await asyncio.gather(*(caller("interactive") for _ in range(4)), caller("bulk"))
        return order.count("bulk") / len(order)

    assert asyncio.run(scenario(0.0)) < 0.05  # without a share, bulk waits for a gap that never comes
    assert 0.15 <= asyncio.run(scenario(0.2)) <= 0.3  # each batch takes the same time: the share is the turns'


def _job(lengths: list[int], priority: str = "bulk", windows: list[int] | None = None,
         deadline: float | None = None) -> Job:
    tokens = [TokenizedText(list(range(n)), n) for n in lengths]
    return Job(EncodeOptions(), tokens, windows, 0.0, deadline, priority=priority)  # type: ignore[arg-type]


def test_a_bulk_job_is_cut_between_inputs_to_the_budget_and_a_longer_input_is_a_part_alone():
    job = _job([30, 30, 30, 100, 10])
    parts = job.parts(64)
    assert [[t.n_tokens for t in p.tokens] for p in parts] == [[30, 30], [30], [100], [10]]
    assert all(p.whole is job and p.priority == "bulk" for p in parts)
    job.cancelled = True
    assert all(p.dropped(time.time()) for p in parts)  # a caller that leaves drops every part
    assert _job([10, 10]).parts(64)[0].whole is None  # it fits: the job itself


def test_cutting_keeps_each_inputs_windows_together():
    parts = _job([40, 40, 40, 20], windows=[2, 1, 1]).parts(90)
    assert [p.windows for p in parts] == [[2], [1, 1]]
    assert [[t.n_tokens for t in p.tokens] for p in parts] == [[40, 40], [40, 20]]


def _busy_load(interactive: int, bulk: int) -> DeviceLoad:
    load = DeviceLoad()
    load.speed.tokens_per_s = load.speed.loaded_tokens_per_s = 100.0
    load.backlog.update(interactive=interactive, bulk=bulk)
    return load


def test_admission_of_a_query_does_not_count_the_bulk_work_queued_behind_it():
    now = time.time()
    load = _busy_load(interactive=100, bulk=10_000)  # 1 s of queries, 100 s of backfill
    assert load.refusal(_job([50], "interactive", deadline=now + 10), now) is None
    load.lanes = False  # fifo: one queue, everything counts
    assert isinstance(load.refusal(_job([50], "interactive", deadline=now + 10), now), WouldMissDeadlineError)


def test_bulk_is_refused_before_queries_once_the_work_ahead_outlasts_the_bulk_wait():
    now = time.time()
    load = _busy_load(interactive=800, bulk=400)  # 12 s of work queued
    load.bulk_max_wait_s = 10.0
    refused = load.refusal(_job([50], deadline=now + 600), now)
    assert isinstance(refused, BulkBacklogError)
    assert refused.retry_after_s == pytest.approx(2.0)  # 12 s queued, of which 10 s it would wait
    assert load.refusal(_job([50], "interactive", deadline=now + 60), now) is None  # 8.5 s of 60: admitted


def test_queued_bulk_tokens_count_toward_autoscaling_with_their_weight():
    metrics = {QUEUED_TOKENS_METRIC: {"a": 1000.0}, QUEUED_BULK_TOKENS_METRIC: {"a": 4000.0}}
    assert QueuedTokensPolicy(target_queued_tokens=1000)(_context(metrics))[0] == 5.0
    assert QueuedTokensPolicy(target_queued_tokens=1000, bulk_weight=0.5)(_context(metrics))[0] == 3.0
    assert QueuedTokensPolicy(target_queued_tokens=1000, bulk_weight=0)(_context(metrics))[0] == 1.0

