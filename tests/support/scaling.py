"""Replicas of a running app over time, as Serve's controller reports them, and which model replicas serve.

Owns what the autoscaling test and `bench/step_load.py` watch while the load of `tests.support.load`
runs: `ReplicaWatch` samples every deployment's replica states in the background (`serve.status()`
blocks, so it runs in a thread) and waits on a condition over them with a deadline; `ReplicaTexts`
finds which model replica workers have encoded texts (a replica that is RUNNING but never routed to
has not scaled anything; `tests.support.faults` and the cluster test watch replacements with it too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.waiting import wait_until_async

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

        async def new_sample_holds() -> bool:
            nonlocal seen
            fresh, seen = self.samples[seen:], len(self.samples)
            return any(condition(states) for _, states in fresh)

        if await wait_until_async(new_sample_holds, deadline_s, self.interval_s / 2):
            return round(time.monotonic() - start, 2)
        return None


class ReplicaTexts:
    """Texts encoded per model replica of `app`, keyed by its worker's pid (or another `info()` field, as
    `node_id`), from `info()` calls through a handle: the router spreads calls over the replicas, so
    repeated calls reach each of them.

    A call may fail or stall without anything being wrong: right after a replica is lost or stopped, the
    router can still send it there. Such a call counts as "not yet" (the next poll asks again); `errors`
    counts them and `last_error` keeps the latest, for a report."""

    def __init__(self, app: str, key: str = "pid"):
        from ray import serve

        self.handle = serve.get_deployment_handle("EmbeddingModel", app)
        self.key = key
        self.seen: dict = {}
        self.errors = 0
        self.last_error: str | None = None

    def _record(self, info: dict | None, error: Exception | None) -> None:
        if error is not None:
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"[:300]
        else:
            self.seen[info[self.key]] = info["counts"].get("texts", 0)

    async def poll(self, calls: int = 8) -> dict:
        """`calls` info() calls; `seen` after them."""
        for _ in range(calls):
            try:
                info = await asyncio.wait_for(self.handle.info.remote(), INFO_CALL_TIMEOUT_S)
            except Exception as exc:  # a lost or stopping replica: not yet, ask again on the next poll
                self._record(None, exc)
            else:
                self._record(info, None)
        return self.seen

    def poll_blocking(self, calls: int = 8) -> dict:
        """`poll` for a caller outside an event loop."""
        for _ in range(calls):
            try:
                info = self.handle.info.remote().result(timeout_s=INFO_CALL_TIMEOUT_S)
            except Exception as exc:  # a lost or stopping replica: not yet, ask again on the next poll
                self._record(None, exc)
            else:
                self._record(info, None)
        return self.seen

    async def wait_for_new(self, before: set, deadline_s: float, interval: float = 0.5) -> float | None:
        """Seconds from now until a replica not in `before` has encoded texts; None past `deadline_s`."""
        start = time.monotonic()

        async def new_one_served() -> bool:
            return any(key not in before and n > 0 for key, n in (await self.poll()).items())

        if await wait_until_async(new_one_served, deadline_s, interval):
            return round(time.monotonic() - start, 2)
        return None
