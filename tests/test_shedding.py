"""Refusals made cheap under a retry storm, without Serve: the ingress refuses what the model replicas' last
refusals already decide (`gateway.shedding.RefusalGate`), the model replica refuses before any tokenizer
call what its queue alone decides (`DeviceLoad.refusal_unseen`), and admission expects the speed achieved
between batches, not the forward pass's alone (`DeviceLoad.computing`)."""

from __future__ import annotations

import time

import pytest

from serve_app.core.errors import BulkBacklogError, WouldMissDeadlineError
from serve_app.gateway.shedding import PROBE_INTERVAL_S, SEEN_FOR_S, RefusalGate
from serve_app.serving.admission import DeviceLoad

NOW = 1_000.0


def _refused_for(seconds: float) -> WouldMissDeadlineError:
    return WouldMissDeadlineError(seconds + 1, 5.0, retry_after_s=seconds)


def test_the_ingress_refuses_a_query_whose_deadline_every_replicas_queue_would_miss():
    gate = RefusalGate()
    gate.heard("a", [_refused_for(50.0)], NOW)
    gate.refusal("interactive", NOW + 10, NOW)  # the first one through is the probe
    refused = gate.refusal("interactive", NOW + 10, NOW + 0.01)
    assert isinstance(refused, WouldMissDeadlineError) and refused.retry_after_s == pytest.approx(49.99)
    assert gate.refusal("interactive", NOW + 100, NOW + 0.01) is None  # 50 s of 100: the replica may admit it
    assert gate.refusal("interactive", None, NOW + 0.01) is None  # no deadline: never refused for one


def test_a_replica_that_did_not_refuse_keeps_the_ingress_sending():
    gate = RefusalGate()
    gate.heard("a", [_refused_for(50.0)], NOW)
    gate.heard("b", [], NOW)  # b answered without refusing
    assert all(gate.refusal("interactive", NOW + 10, NOW + 0.01 * i) is None for i in range(1, 20))


def test_one_request_per_probe_interval_still_reaches_the_replicas_and_a_drained_queue_is_learnt():
    gate = RefusalGate()
    gate.heard("a", [_refused_for(50.0)], NOW)
    through = [t for t in (NOW + 0.05 * i for i in range(1, 41)) if gate.refusal("interactive", NOW + 10, t) is None]
    assert len(through) == pytest.approx(2.0 / PROBE_INTERVAL_S, abs=1)  # one per interval over 2 s
    gate.heard("a", [], NOW + 2.1)  # the probe was admitted: nothing new said about the queue ...
    assert gate.refusal("interactive", NOW + 60, NOW + 2.2) is None  # ... and it drains: later deadlines pass
    assert gate.refusal("interactive", NOW + 10, NOW + SEEN_FOR_S + 60) is None  # the busy span is over


def test_bulk_refusals_close_only_the_bulk_lane_at_the_ingress():
    gate = RefusalGate()
    gate.heard("a", [BulkBacklogError(12.0, 10.0, retry_after_s=2.0)], NOW)
    gate.refusal("bulk", NOW + 300, NOW)  # the probe
    assert isinstance(gate.refusal("bulk", NOW + 300, NOW + 0.01), BulkBacklogError)
    assert gate.refusal("interactive", NOW + 10, NOW + 0.01) is None
    assert gate.refusal("bulk", NOW + 300, NOW + 2.5) is None  # its retry-after passed


def test_the_model_replica_refuses_before_tokenizing_what_the_queue_ahead_alone_decides():
    load = DeviceLoad()
    load.speed.tokens_per_s = load.speed.loaded_tokens_per_s = 100.0
    now = time.time()
    assert load.refusal_unseen("interactive", now + 1, now) is None  # nothing queued: its own size decides
    load.backlog["interactive"] = 1_000  # 10 s of work
    assert isinstance(load.refusal_unseen("interactive", now + 5, now), WouldMissDeadlineError)
    assert load.refusal_unseen("interactive", now + 60, now) is None  # may fit: tokenized and judged whole
    assert load.refusal_unseen("bulk", now + 600, now) is None  # 10 s: what the bulk lane waits
    load.backlog["bulk"] = 100
    assert isinstance(load.refusal_unseen("bulk", now + 600, now), BulkBacklogError)


def _newest_rate(load: DeviceLoad, before: float) -> float:
    """The newest batch's rate, from the moving average before and after it."""
    return (load.speed.tokens_per_s - 0.7 * before) / 0.3


def test_admission_learns_the_speed_achieved_between_batches_not_the_forward_pass_alone():
    load = DeviceLoad()
    formed = time.perf_counter()
    with load.computing(100, ready=formed):
        time.sleep(0.05)
    first = load.speed.tokens_per_s
    time.sleep(0.15)  # host work between two batches of a busy queue (the next was formed meanwhile) ...
    with load.computing(100, ready=formed):
        time.sleep(0.05)
    assert _newest_rate(load, first) == pytest.approx(500, rel=0.25)  # ... counts: 100 tokens in ~0.2 s
    time.sleep(0.3)  # idle: the next batch is formed after it, and the idle time does not count
    before = load.speed.tokens_per_s
    with load.computing(100, ready=time.perf_counter()):
        time.sleep(0.05)
    assert _newest_rate(load, before) == pytest.approx(2000, rel=0.25)


def test_before_any_batch_ran_behind_a_queue_a_burst_is_admitted_at_half_the_idle_speed():
    """The storm's first burst was admitted at the idle speed and met half of it (5 of its requests 504)."""
    load = DeviceLoad()
    load.speed.record(1000, 1.0)  # alone: 1000 tokens/s
    now = time.time()
    load.backlog["interactive"] = 20_000  # 20 s at the idle speed, 40 s at half
    refused = load.refusal_unseen("interactive", now + 30, now)
    assert isinstance(refused, WouldMissDeadlineError) and refused.expected_s == pytest.approx(40)
    load.speed.record(1000, 1.0, loaded=True)  # a batch ran with work waiting: its speed is the queue's
    assert load.refusal_unseen("interactive", now + 30, now) is None
