"""A model deployment on a device made slow (or held) deliberately, and observed: the real encoder, its
forward pass slowed per padded token, recording the token ids of every text it computes, and holding
(a hung device) from `hold()` until `release()`. Tests deploy it in place of `EmbeddingModel` to make a
batch outlast a deadline, a timeout or a health probe by construction, not by the machine's speed, and
wait on its `state()` instead of sleeping.
"""

from __future__ import annotations

import os
import threading
import time

from serve_app.core.cache import CacheConfig
from serve_app.core.config import EncoderConfig
from serve_app.serving.model import EmbeddingModel


class SlowDevice(EmbeddingModel):
    """The real model deployment whose forward pass first sleeps `s_per_token` per padded token (changed
    live by `slow_down`), records the token ids of each text it computes, and after `hold()` blocks until
    `release()`. No cache unless one is given: every text goes through the device."""

    def __init__(self, encoder_config: EncoderConfig, s_per_token: float = 0.0, cache: CacheConfig | None = None):
        super().__init__(encoder_config, cache)
        real_forward = self._encoder.forward
        self.s_per_token = s_per_token
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
                time.sleep(self.s_per_token * batch.input_ids.numel())
                return real_forward(batch)
            finally:
                self.in_forward -= 1

        self._encoder.forward = forward

    async def check_health(self) -> None:
        self.busy_probes += self.in_forward > 0
        await super().check_health()

    # `replica`: on a deployment routed by `serving.routing`, a call naming a replica id goes to that replica
    # (how a test reaches one replica of several); the replica itself ignores it.
    async def state(self, replica: str | None = None) -> dict:
        return {"computed": list(self.computed), "in_forward": self.in_forward, "busy_probes": self.busy_probes,
                "pid": os.getpid(), "counts": dict(self._stats.counts)}

    async def slow_down(self, s_per_token: float) -> None:
        """From the next forward pass on, sleep `s_per_token` per padded token."""
        self.s_per_token = s_per_token

    async def hold(self, replica: str | None = None) -> None:
        self._released.clear()  # held again after a release: the next forward pass waits again
        self._held = True

    async def release(self) -> None:
        self._held = False
        self._released.set()


class LaneRecorder(SlowDevice):
    """`SlowDevice` that records every request it receives: its priority (the lane it asks for), its inputs
    and the seconds left to its deadline on arrival. Independent of the replica's own per-lane counts."""

    def __init__(self, encoder_config: EncoderConfig, s_per_token: float = 0.0, cache: CacheConfig | None = None):
        super().__init__(encoder_config, s_per_token, cache)
        self.received: list[dict] = []

    async def encode_stream(self, requests):  # the ingress's only encode call
        now = time.time()
        self.received += [{"priority": r.priority, "inputs": r.inputs,
                           "deadline_in_s": None if r.deadline is None else r.deadline - now} for r in requests]
        async for update in super().encode_stream(requests):
            yield update

    async def lanes(self) -> list[dict]:
        return list(self.received)
