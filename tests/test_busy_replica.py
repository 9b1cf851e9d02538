"""A model replica on a slow device: Serve's health probe does not wait behind its batches (no restart
however long they run), and a stalled device is reported unhealthy.

The device is the real encoder with its forward pass slowed per padded token (as a big batch of the
full-size model on a CPU is slow), and recording the token ids of every text it computes.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from ray import serve

from serve_app.app import model_deployment_options
from serve_app.core.config import EncoderConfig
from serve_app.serving.config import BatchingConfig
from serve_app.serving.model import EmbeddingModel
from serve_app.serving.schemas import EncodeRequest
from tests.support.faults import model_replicas
from tests.support.load import text_pool

# A request of 8 pool texts (~1,000 padded tokens) takes ~3 s on the device: each batch is longer
# than the health timeout set below.
SLOW_S_PER_TOKEN = 0.003


class SlowDevice(EmbeddingModel):
    """The real model deployment whose forward pass first sleeps `s_per_token` per padded token, records
    the token ids of each text it computes, and after `hold()` blocks (a hung device) until `release()`."""

    def __init__(self, encoder_config: EncoderConfig, s_per_token: float = 0.0):
        super().__init__(encoder_config)  # no cache: every text goes through the device
        real_forward = self._encoder.forward
        self.computed: list[list[int]] = []
        self.in_forward = 0  # forward passes running now (written by the compute thread only)
        self.busy_probes = 0  # Serve's health probes that arrived while a forward pass ran
        self._held, self._released = False, threading.Event()

        def forward(batch):
            self.in_forward += 1
            try:
                self.computed += [item.ids for item in batch.items]
                if self._held:
                    self._released.wait(300)
                time.sleep(s_per_token * batch.input_ids.numel())
                return real_forward(batch)
            finally:
                self.in_forward -= 1

        self._encoder.forward = forward

    async def check_health(self) -> None:
        self.busy_probes += self.in_forward > 0
        await super().check_health()

    async def state(self) -> dict:
        return {"computed": list(self.computed), "in_forward": self.in_forward, "busy_probes": self.busy_probes,
                "pid": os.getpid(), "counts": dict(self._counts)}

    async def hold(self) -> None:
        self._held = True

    async def release(self) -> None:
        self._held = False
        self._released.set()


@pytest.fixture(scope="module")
def encoder_config(tiny_model_dir) -> EncoderConfig:
    return EncoderConfig(model=tiny_model_dir, device="cpu", dtype="fp32", max_length=128)


def _deploy(app: str, encoder_config: EncoderConfig, s_per_token: float = 0.0, **options):
    """`SlowDevice` as app `app` (its deployment keeps the model's name, so `model_replicas(app)` lists it)."""
    options = {**model_deployment_options(), **options}
    return serve.run(serve.deployment(SlowDevice, **options).bind(encoder_config, s_per_token), name=app,
                     route_prefix=None)


def _wait_until(condition, deadline_s: float, interval: float = 0.2) -> bool:
    """Poll `condition()` until it is true or `deadline_s` seconds have passed."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def _user_config(**knobs) -> dict:
    return {**BatchingConfig().model_dump(), **knobs}


def test_a_busy_replica_passes_health_checks_however_long_its_batches(serve_instance, encoder_config):
    """Batches of several seconds under sustained load, Serve probing every second with a 2 s timeout:
    the probes pass while the device works, and the replica is never restarted (same actor, same pid)."""
    options = {"health_check_period_s": 1, "health_check_timeout_s": 2,
               "user_config": _user_config(stall_timeout_s=120)}
    model = _deploy("busy", encoder_config, SLOW_S_PER_TOKEN, **options)
    pool, stop = text_pool(64), threading.Event()
    before, first_pid = model_replicas("busy"), model.state.remote().result()["pid"]

    def client(k: int) -> None:
        while not stop.is_set():
            model.encode.remote(EncodeRequest(texts=pool[k * 8:(k + 1) * 8])).result(timeout_s=120)

    clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for thread in clients:
        thread.start()
    try:
        # 9 probes on a busy device, across batches: three times what Serve needs (3 failures in a row) to
        # kill a replica whose probe waits behind the batches. Stop early if the replica changed.
        def seen_enough() -> bool:
            state = model.state.remote().result()
            return state["busy_probes"] >= 9 and state["counts"].get("batches", 0) >= 2

        _wait_until(lambda: model_replicas("busy") != before or seen_enough(), deadline_s=180, interval=1)
        after, state = model_replicas("busy"), model.state.remote().result()
        compute = model.info.remote().result()["compute"]
        deployment = serve.status().applications["busy"].deployments["EmbeddingModel"]
    finally:
        stop.set()
        for thread in clients:
            thread.join(150)
        serve.delete("busy")
    assert len(before) == 1 and after == before and state["pid"] == first_pid, (before, after)
    assert state["busy_probes"] >= 9 and state["counts"]["batches"] >= 2, state
    # The batches outlasted Serve's probe timeout: a probe that waited behind them would have failed.
    assert compute["longest_step_s"] > options["health_check_timeout_s"], compute
    assert deployment.status == "HEALTHY" and dict(deployment.replica_states) == {"RUNNING": 1}, deployment


def test_a_stalled_device_is_reported_unhealthy_and_replaced(serve_instance, encoder_config):
    """A forward pass blocked far beyond `stall_timeout_s`: the probe says so, and Serve replaces the replica."""
    options = {"health_check_period_s": 3, "health_check_timeout_s": 5, "graceful_shutdown_timeout_s": 1,
               "user_config": _user_config(stall_timeout_s=3)}
    model = _deploy("stall", encoder_config, **options)
    before = model_replicas("stall")
    model.hold.remote().result()
    stuck = model.encode.remote(EncodeRequest(texts=["this batch never finishes"]))

    def probe_says_stalled() -> bool:
        try:
            model.check_health.remote().result(timeout_s=10)
        except Exception as exc:  # the probe's own error, or the replica already gone
            return "compute stalled" in str(exc)
        return False

    try:
        assert _wait_until(lambda: model.state.remote().result()["in_forward"] == 1, deadline_s=60)
        reported = _wait_until(probe_says_stalled, deadline_s=60, interval=0.25)
        replaced = _wait_until(lambda: model_replicas("stall") not in ([], before), deadline_s=120, interval=1)
    finally:
        model.release.remote()  # on the old replica, if it still runs
        del stuck
        serve.delete("stall")
    assert reported, "check_health never reported the stalled device"
    assert replaced, f"Serve did not replace the stalled replica {before}"
