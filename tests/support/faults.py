"""Faults on a running service: model replicas by name, one killed under load, the recovery watched.

Owns the fault side of the reliability checks: `model_replicas` lists the model replica actors (a
restart changes their names), `kill_model_replica` kills one as a crash would, and `kill_under_load`
runs a closed loop from `tests.support.load` across such a kill and reports, step by step, when
`/health` showed the gap, when it was `ok` again and when a replacement replica served texts.
It waits on state, never on time alone; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.support.load import Checker, LoadReport, closed_loop
from tests.support.scaling import ReplicaTexts
from tests.support.waiting import wait_until_async


async def _health(session: aiohttp.ClientSession, url: str) -> str:
    """`/health` as one word: its `status` on 200, else the HTTP status, or "down" without an answer."""
    try:
        async with session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=5)) as response:
            body = await response.json(content_type=None)
            return body["status"] if response.status == 200 else str(response.status)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return "down"


def model_replicas(app: str = "bge-m3") -> list[str]:
    """Names of the running model replica actors of `app` (a restart changes them)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{app}#EmbeddingModel#"))


def kill_model_replica(app: str = "bge-m3") -> str:
    """Kill one model replica actor with `ray.kill`, as a crash would; Serve must replace it."""
    import ray

    name = model_replicas(app)[0]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


async def kill_under_load(url: str, requests: list[list[str]], checker: Checker, concurrency: int,
                          kill_after_ok: int = 20, deadline_s: float = 60, app: str = "bge-m3") -> dict:
    """Closed-loop load; one model replica killed once `kill_after_ok` requests were answered 200.

    Waits on state, not on time: the load runs until `/health` has shown the gap (anything but `ok`)
    and the recovery (`ok` again), and a replacement replica has encoded texts of this load, or until
    `deadline_s` after the kill. The result says what was seen; a step that never came is None.
    """
    stop, report = asyncio.Event(), LoadReport("closed", 0)
    load = asyncio.create_task(closed_loop(url, requests, checker, concurrency, 10 * deadline_s, until=stop,
                                           report=report))
    loop, replicas = asyncio.get_running_loop(), ReplicaTexts(app)
    timeline: list[tuple[float, str]] = []
    result: dict = {"killed": None, "first_not_ok_s": None, "recovered_s": None, "replacement_served_s": None}
    try:
        async def flowing() -> bool:
            return report.statuses["200"] >= kill_after_ok

        async def every_replica_seen() -> bool:
            return len(await replicas.poll()) >= len(await loop.run_in_executor(None, model_replicas, app))

        start = time.monotonic()
        if not (await wait_until_async(flowing, deadline_s)
                and await wait_until_async(every_replica_seen, deadline_s - (time.monotonic() - start))):
            result["error"] = "the load did not get going, or not every replica answered, before the kill"
            return result  # the same dict: `finally` still adds the load to it
        before = set(replicas.seen)
        killed_at = time.monotonic()
        result["killed"] = await loop.run_in_executor(None, kill_model_replica, app)
        async with aiohttp.ClientSession() as session:
            async def gap_then_recovery() -> bool:
                timeline.append((round(time.monotonic() - killed_at, 2), await _health(session, url)))
                not_ok = [t for t, s in timeline if s != "ok"]
                if not_ok and result["first_not_ok_s"] is None:
                    result["first_not_ok_s"] = not_ok[0]
                return bool(not_ok) and timeline[-1][1] == "ok"

            if await wait_until_async(gap_then_recovery, deadline_s - (time.monotonic() - killed_at)):
                result["recovered_s"] = timeline[-1][0]

        async def replacement_served() -> bool:
            return any(pid not in before and texts > 0 for pid, texts in (await replicas.poll()).items())

        if await wait_until_async(replacement_served, deadline_s - (time.monotonic() - killed_at)):
            result["replacement_served_s"] = round(time.monotonic() - killed_at, 2)
    finally:
        stop.set()
        result["load"] = await load
        result["info_call_errors"] = replicas.errors
        result["last_info_call_error"] = replicas.last_error
    return {**result, "health_after_kill": sorted({s for _, s in timeline}), "health_timeline": timeline,
            "final_health": timeline[-1][1] if timeline else None}
