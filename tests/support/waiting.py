"""Waiting on state with a deadline (never a fixed sleep): `wait_until` for sync callers (tests that poll Ray
or Serve), `wait_until_async` for coroutines (load drivers, watchers), with the same contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_until(condition: Callable[[], bool], deadline_s: float, interval: float = 0.2) -> bool:
    """Poll `condition()` every `interval` seconds until it is true (True) or `deadline_s` has passed (False)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


async def wait_until_async(condition: Callable[[], Awaitable[bool]], deadline_s: float, interval: float = 0.2) -> bool:
    """`wait_until` for a coroutine: await `condition()` every `interval` seconds (the event loop runs
    meanwhile) until it is true (True) or `deadline_s` has passed (False)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(interval)
    return False
