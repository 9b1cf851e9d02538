"""Waiting on state with a deadline (never a fixed sleep), for tests that poll Ray or Serve from sync code."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], deadline_s: float, interval: float = 0.2) -> bool:
    """Poll `condition()` every `interval` seconds until it is true (True) or `deadline_s` has passed (False)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False
