"""Replicas of a running app over time, as Serve's controller reports them, and which model replicas serve.

Owns what the autoscaling test and `bench/step_load.py` watch while the load of `tests.support.load`
runs: `ReplicaWatch` samples every deployment's replica states in the background (`serve.status()`
blocks, so it runs in a thread) and waits on a condition over them with a deadline; `ServingReplicas`
finds which model replica workers have encoded texts (a replica that is RUNNING but never routed to
has not scaled anything).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

INFO_CALL_TIMEOUT_S = 10  # one `info()` call through the handle; past it, that call counts as "not yet"


def replica_states(app: str) -> dict[str, dict[str, int]]:
    """`{deployment: {state: replicas}}` of `app` now (states with no replica left out)."""
    from ray import serve

    deployments = serve.status().applications[app].deployments
    return {name: {str(getattr(state, "value", state)): n for state, n in d.replica_states.items() if n}
            for name, d in deployments.items()}


def running(states: dict[str, int]) -> int:
    return states.get("RUNNING", 0)


def alive(states: dict[str, int]) -> int:
    """Replicas the controller wants: starting, running or updating (not stopping)."""
    return sum(n for state, n in states.items() if state not in ("STOPPING", "STOPPED"))


@dataclass
class ReplicaWatch:
    """Samples `replica_states(app)` every `interval_s` from `start()`; `samples` are `(seconds since
    start, states)`. `wait(condition, deadline_s)` waits for a sample on which `condition` holds."""

    app: str
    interval_s: float = 0.5
    samples: list[tuple[float, dict[str, dict[str, int]]]] = field(default_factory=list)
    started: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        while not stop.is_set():
            try:
                states = await loop.run_in_executor(None, replica_states, self.app)
            except Exception:  # the controller is busy: the next sample asks again
                states = None
            if states is not None:
                self.samples.append((round(time.monotonic() - self.started, 2), states))
            await asyncio.sleep(self.interval_s)

    def changes(self) -> list[tuple[float, dict[str, dict[str, int]]]]:
        """The samples where some deployment's replica states changed (and the first): the timeline."""
        return [(t, states) for i, (t, states) in enumerate(self.samples)
                if i == 0 or states != self.samples[i - 1][1]]

    async def wait(self, condition: Callable[[dict[str, dict[str, int]]], bool], deadline_s: float) -> float | None:
        """Seconds from now until a new sample satisfies `condition`; None if none did within `deadline_s`."""
        start, seen = time.monotonic(), len(self.samples)
        while time.monotonic() - start < deadline_s:
            for _, states in self.samples[seen:]:
                if condition(states):
                    return round(time.monotonic() - start, 2)
            seen = len(self.samples)
            await asyncio.sleep(self.interval_s / 2)
        return None


class ServingReplicas:
    """Texts encoded per model replica worker (pid), from `info()` calls through a handle: the router
    spreads calls over the replicas, so repeated calls reach each of them. A failed or slow call (a
    replica stopping) counts as "not yet"."""

    def __init__(self, app: str):
        from ray import serve

        self.handle = serve.get_deployment_handle("EmbeddingModel", app)
        self.texts: dict[int, int] = {}

    async def poll(self, calls: int = 8) -> dict[int, int]:
        for _ in range(calls):
            try:
                info = await asyncio.wait_for(self.handle.info.remote(), INFO_CALL_TIMEOUT_S)
            except Exception:
                continue
            self.texts[info["pid"]] = info["counts"].get("texts", 0)
        return self.texts

    async def wait_for_new(self, before: set[int], deadline_s: float) -> float | None:
        """Seconds from now until a replica not in `before` has encoded texts; None past `deadline_s`."""
        start = time.monotonic()
        while time.monotonic() - start < deadline_s:
            if any(pid not in before and n > 0 for pid, n in (await self.poll()).items()):
                return round(time.monotonic() - start, 2)
            await asyncio.sleep(0.5)
        return None
