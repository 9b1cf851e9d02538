"""Autoscaling on load: the model deployment scales on the real tokens its batch queues hold.

A step of concurrent HTTP callers must bring a second model replica, which then serves, and the end of
the step must take it away again, with no request failed or answered with another text's vector on the
way (a replica being removed finishes the requests it holds). The same step with Serve's own signal,
ongoing requests per model replica, brings nothing: the ingress coalesces HTTP requests into a few
calls, so that count stays at a handful whatever the load.
"""

from __future__ import annotations

import asyncio

import pytest
from ray import serve
from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serve_app.app import MODEL_DEPLOYMENT, build_service
from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.serving.autoscaling import QUEUED_TOKENS_METRIC, QueuedTokensPolicy
from serve_app.serving.config import ModelAutoscaling
from serve_app.serving.deployments import model_autoscaling
from tests.support.load import Checker, LoadReport, closed_loop, make_requests, text_pool
from tests.support.scaling import ReplicaTexts, ReplicaWatch, alive

APP = "bge-m3"
STEP_CALLERS = 64  # the step: well past what one replica computes at once (docs/serving.md, "Autoscaling")
TAIL_CALLERS = 2  # before, during and after the step, so replicas start and stop under load
# Short delays so the test waits seconds, not Serve's default half-minute ones: replicas report their
# queued tokens every second (not every 10 s) and the look-back window is just above that (Serve warns
# below it, and will refuse it). Only how soon Serve sees the load changes; the policy is the shipped one.
FAST = {"min_replicas": 1, "max_replicas": 2, "metrics_interval_s": 1, "look_back_period_s": 2,
        "upscale_delay_s": 1, "downscale_delay_s": 5}


@pytest.fixture(scope="module")
def uncut_config(encoder_config) -> EncoderConfig:
    """The shared settings with EncoderConfig's own max_length: the pool's texts are never cut, so the
    queued tokens the policy scales on are all of each text's."""
    return encoder_config.model_copy(update={"max_length": EncoderConfig.model_fields["max_length"].default})


@pytest.fixture(scope="module")
def pool() -> list[str]:
    return text_pool(500)


@pytest.fixture(scope="module")
def checker(uncut_config, pool) -> Checker:
    return Checker(Encoder(uncut_config), pool)


def _context(metrics: dict | None, target_num_replicas: int = 1) -> AutoscalingContext:
    """What Serve's controller hands a policy: here with the per-replica metrics given."""
    config = AutoscalingConfig(min_replicas=1, max_replicas=4)
    return AutoscalingContext(
        deployment_id=DeploymentID(name=MODEL_DEPLOYMENT, app_name=APP), deployment_name=MODEL_DEPLOYMENT,
        app_name=APP, current_num_replicas=target_num_replicas, target_num_replicas=target_num_replicas,
        running_replicas=[], total_num_requests=0, total_queued_requests=0, aggregated_metrics=metrics,
        raw_metrics=None, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=4, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None, config=config)


def test_policy_asks_for_the_queued_tokens_over_the_target_per_replica():
    policy = QueuedTokensPolicy(target_queued_tokens=1000)
    assert policy(_context({QUEUED_TOKENS_METRIC: {"a": 2500.0, "b": 500.0}}))[0] == 3.0
    assert policy(_context({QUEUED_TOKENS_METRIC: {"a": 0.0, "b": 0.0}}, target_num_replicas=2))[0] == 0.0


def test_policy_holds_the_replica_count_until_a_replica_reports():
    policy = QueuedTokensPolicy(**ModelAutoscaling().model_dump())
    assert policy(_context(None, target_num_replicas=3))[0] == 3
    assert policy(_context({}, target_num_replicas=2))[0] == 2


def test_policy_with_a_misspelled_or_non_positive_target_keeps_the_replica_count_and_says_why(caplog):
    """Serve's controller builds the policy; raising there would stall the controller for every app."""
    for kwargs in ({"target_queued_tokens": 0}, {"target_tokens": 1000}):
        policy = QueuedTokensPolicy(**kwargs)
        assert policy(_context({QUEUED_TOKENS_METRIC: {"a": 1e6}}, target_num_replicas=2))[0] == 2
        assert "autoscaling of this deployment is off" in caplog.text and next(iter(kwargs)) in caplog.text
        caplog.clear()


def _deploy(config: EncoderConfig, autoscaling: dict) -> None:
    args = {"encoder": config.model_dump(), "cache": {"backend": "off"}, "limits": {"request_timeout_s": 60}}
    # Half a CPU per replica (so one torch thread): the model, not the test's own client, is what the
    # step saturates on this 2-core machine, as in the measurement that found the old signal blind.
    options = {"autoscaling_config": autoscaling, "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0}}
    serve.run(build_service(args, model_options=options), name=APP, route_prefix="/")


async def _step(url: str, requests: list[list[str]], checker: Checker, up_deadline_s: float,
                serve_deadline_s: float, down_deadline_s: float) -> dict:
    """Tail load throughout; the step on top until the second replica serves (or `up_deadline_s` passes
    without one being started), then the tail alone until one replica is left. Every wait is on state."""
    serving, watch = ReplicaTexts(APP), ReplicaWatch(APP)
    before = set(await serving.poll())
    stop_watch, stop_step, stop_all = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tail_report, step_report = LoadReport("closed", 0), LoadReport("closed", 0)
    watching = asyncio.create_task(watch.run(stop_watch))
    tail = asyncio.create_task(closed_loop(url, requests, checker, TAIL_CALLERS, 600, until=stop_all,
                                           report=tail_report))
    step = asyncio.create_task(closed_loop(url, requests, checker, STEP_CALLERS - TAIL_CALLERS, 600, until=stop_step,
                                           report=step_report))
    result: dict = {"started_s": None, "serving_s": None, "back_to_one_s": None}
    try:
        result["started_s"] = await watch.wait(lambda s: alive(s[MODEL_DEPLOYMENT]) >= 2, up_deadline_s)
        if result["started_s"] is not None:
            served = await serving.wait_for_new(before, serve_deadline_s)
            result["serving_s"] = None if served is None else round(result["started_s"] + served, 2)
        stop_step.set()
        await step
        if result["started_s"] is not None:
            result["back_to_one_s"] = await watch.wait(lambda s: s[MODEL_DEPLOYMENT] == {"RUNNING": 1},
                                                       down_deadline_s)
    finally:
        stop_step.set()
        stop_all.set()
        await asyncio.gather(step, tail)
        stop_watch.set()
        await watching
    return {**result, "step": step_report, "tail": tail_report, "replicas": watch.changes()}


def test_step_load_adds_a_model_replica_that_serves_then_removes_it_without_a_failed_request(
        serve_instance, uncut_config, pool, checker):
    _deploy(uncut_config, {**model_autoscaling(), **FAST})
    try:
        result = asyncio.run(_step(serve_instance, make_requests(pool, 3000, 8), checker, up_deadline_s=30,
                                   serve_deadline_s=120, down_deadline_s=120))
    finally:
        serve.delete(APP)
    step, tail = result["step"].summary(), result["tail"].summary()
    print({**result, "step": step, "tail": tail})
    # The step's queued tokens pass the shipped target: Serve starts a second replica within 30 s ...
    assert result["started_s"] is not None, result["replicas"]
    # ... which serves texts (routed to, not only RUNNING) ...
    assert result["serving_s"] is not None, result["replicas"]
    # ... and once only the tail is left, the deployment goes back to one replica.
    assert result["back_to_one_s"] is not None, result["replicas"]
    # Replicas started and stopped under load: every request answered 200 with its own texts' vectors.
    for load in (step, tail):
        assert load["lost"] == 0 and set(load["statuses"]) == {"200"}, load


@pytest.mark.load  # 50 s that prove a negative; kept out of CI, its figure in docs/benchmarks.md
def test_ongoing_requests_signal_does_not_scale_on_the_same_step(serve_instance, uncut_config, pool, checker):
    """The configuration this project shipped before: Serve's own policy on ongoing requests per model
    replica, target 64. The ingress's coalesced calls never get there: no second replica in 30 s."""
    _deploy(uncut_config, {**FAST, "target_ongoing_requests": 64})
    try:
        result = asyncio.run(_step(serve_instance, make_requests(pool, 3000, 8), checker, up_deadline_s=30,
                                   serve_deadline_s=0, down_deadline_s=0))
    finally:
        serve.delete(APP)
    step = result["step"].summary()
    assert step["statuses"]["200"] > 0 and step["lost"] == 0, step
    assert result["started_s"] is None, result["replicas"]
