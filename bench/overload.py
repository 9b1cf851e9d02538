"""Overload and fault driver: floods the service on loopback, checks every answer, reports the figures.

A library for tests/test_reliability.py and a CLI for the long run recorded in docs/reliability.md:

    .venv/bin/python -m bench.overload --model .models/tiny --duration 120

Every request carries distinct texts; a 200 counts as correct only when each returned dense vector
equals the encoder's own vector for that text, in request order. A request that gets no answer within
the client timeout counts as hung. Statuses other than 200/413/429/503/504 are failures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ANSWERS = {200, 413, 429, 503, 504}  # the only statuses a client may see under overload or faults


def text_pool(n: int, seed: int = 0) -> list[str]:
    """`n` distinct texts of mixed length and script, so a vector given to the wrong request shows."""
    rng = random.Random(seed)
    words = ["river", "mountain", "search", "東京", "図書館", "library", "vector", "index", "model", "passage"]
    return [f"{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for i in range(n)]


def make_requests(pool: list[str], n: int, max_texts: int, oversize_every: int = 0, seed: int = 0) -> list[list[str]]:
    """`n` requests of 1..max_texts texts; every `oversize_every`-th asks for max_texts+1 (a 413)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = max_texts + 1 if oversize_every and i % oversize_every == oversize_every - 1 else rng.randint(1, max_texts)
        out.append(rng.sample(pool, k))
    return out


class Checker:
    """The encoder's own dense vector for each text of the pool."""

    def __init__(self, encoder, pool: list[str]):
        self.expected = {t: e.dense for t, e in zip(pool, encoder.encode(pool, dense=True, sparse=False))}

    def correct(self, texts: list[str], body: dict) -> bool:
        data = body.get("data", [])
        if [d["index"] for d in data] != list(range(len(texts))):
            return False
        got = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
        return all(np.allclose(g, self.expected[t], atol=1e-4) for g, t in zip(got, texts))


@dataclass
class LoadReport:
    """What the clients saw: answers by status, wrong and hung requests, latencies."""

    mode: str
    seconds: float
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    wrong: int = 0  # a 200 whose vectors are not the encoder's for that request's texts
    hung: int = 0  # no answer within the client timeout
    transport_errors: int = 0  # connection refused or reset
    unexpected: int = 0  # a status outside ANSWERS, or a non-JSON body
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def record(self, status, latency: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies.setdefault(str(status), []).append(latency)

    @property
    def ok_per_s(self) -> float:
        return self.statuses["200"] / self.seconds

    @property
    def lost(self) -> int:
        """Requests without a correct answer or a clear error: must be 0."""
        return self.wrong + self.hung + self.transport_errors + self.unexpected

    def summary(self) -> dict:
        lat = {s: {"p50_ms": round(float(np.percentile(v, 50)) * 1e3, 1),
                   "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 1),
                   "max_ms": round(max(v) * 1e3, 1)} for s, v in sorted(self.latencies.items())}
        return {**{k: v for k, v in asdict(self).items() if k not in ("latencies", "statuses")},
                "statuses": dict(sorted(self.statuses.items())), "ok_per_s": round(self.ok_per_s, 1),
                "lost": self.lost, "latency": lat}


async def _one(session: aiohttp.ClientSession, url: str, texts: list[str], checker: Checker,
               report: LoadReport, timeout: float, headers: dict) -> None:
    payload = json.dumps({"input": texts, "encoding_format": "base64"})
    start = time.perf_counter()
    report.sent += 1
    try:
        async with session.post(f"{url}/v1/embeddings", data=payload, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.json(content_type=None)
            status = response.status
    except asyncio.TimeoutError:
        report.hung += 1
        return
    except (aiohttp.ClientError, ValueError):
        report.transport_errors += 1
        return
    report.record(status, time.perf_counter() - start)
    if status not in ANSWERS or (status != 200 and "error" not in body):
        report.unexpected += 1
    elif status == 200 and not checker.correct(texts, body):
        report.wrong += 1


async def open_loop(url: str, requests: list[list[str]], checker: Checker, rate: float, seconds: float,
                    timeout: float = 60, headers: dict | None = None,
                    until: Callable[[LoadReport], bool] | None = None) -> LoadReport:
    """Send at `rate` requests/s, whatever the answers (arrivals do not wait for them), for `seconds`;
    with `until`, for as long as it takes the report to satisfy it, `seconds` being the deadline."""
    report = LoadReport("open", seconds)
    headers = {"content-type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks, start, i = [], time.perf_counter(), 0
        while (now := time.perf_counter() - start) < seconds and not (until is not None and until(report)):
            due = int(now * rate) + 1
            while i < due:
                tasks.append(asyncio.create_task(
                    _one(session, url, requests[i % len(requests)], checker, report, timeout, headers)))
                i += 1
            await asyncio.sleep(min(0.005, 1 / rate))
        report.seconds = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return report


async def closed_loop(url: str, requests: list[list[str]], checker: Checker, concurrency: int, seconds: float,
                      timeout: float = 60, headers: dict | None = None,
                      until: Callable[[LoadReport], bool] | asyncio.Event | None = None,
                      report: LoadReport | None = None) -> LoadReport:
    """`concurrency` clients, each sending its next request when the last one is answered, for `seconds`;
    with `until` (a condition on the report, or an event), until it holds, `seconds` being the deadline.
    `report` lets a caller watch the answers while the load runs."""
    report = report if report is not None else LoadReport("closed", seconds)
    headers = {"content-type": "application/json", **(headers or {})}
    start, cursor = time.perf_counter(), 0
    stop = start + seconds

    def done() -> bool:
        if isinstance(until, asyncio.Event):
            return until.is_set()
        return until is not None and until(report)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def client():
            nonlocal cursor
            while time.perf_counter() < stop and not done():
                cursor += 1
                await _one(session, url, requests[cursor % len(requests)], checker, report, timeout, headers)
        await asyncio.gather(*(client() for _ in range(concurrency)))
    report.seconds = time.perf_counter() - start
    return report


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


async def _wait(condition, deadline: float, interval: float = 0.2) -> bool:
    """Poll an async `condition` until it is true or the monotonic `deadline` passes."""
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(interval)
    return False


class _ReplicaTexts:
    """Texts encoded per model replica worker (pid), from `info()` calls through a handle: routing picks
    replicas at random, so repeated calls reach each of them."""

    def __init__(self, app: str):
        from ray import serve

        self.handle = serve.get_deployment_handle("EmbeddingModel", app)
        self.seen: dict[int, int] = {}

    async def poll(self, calls: int = 8) -> dict[int, int]:
        for _ in range(calls):
            info = await self.handle.info.remote()
            self.seen[info["pid"]] = info["counts"].get("texts", 0)
        return self.seen


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
    loop, timeline, replicas = asyncio.get_running_loop(), [], _ReplicaTexts(app)
    result: dict = {"killed": None, "first_not_ok_s": None, "recovered_s": None, "replacement_served_s": None}
    try:
        async def flowing() -> bool:
            return report.statuses["200"] >= kill_after_ok

        async def every_replica_seen() -> bool:
            return len(await replicas.poll()) >= len(await loop.run_in_executor(None, model_replicas, app))

        start = time.monotonic()
        if not (await _wait(flowing, start + deadline_s) and await _wait(every_replica_seen, start + deadline_s)):
            return {**result, "error": "the load did not get going, or not every replica answered, before the kill"}
        before = set(replicas.seen)
        killed_at = time.monotonic()
        result["killed"] = await loop.run_in_executor(None, kill_model_replica, app)
        deadline = killed_at + deadline_s
        async with aiohttp.ClientSession() as session:
            async def gap_then_recovery() -> bool:
                timeline.append((round(time.monotonic() - killed_at, 2), await _health(session, url)))
                not_ok = [t for t, s in timeline if s != "ok"]
                if not_ok and result["first_not_ok_s"] is None:
                    result["first_not_ok_s"] = not_ok[0]
                return bool(not_ok) and timeline[-1][1] == "ok"

            if await _wait(gap_then_recovery, deadline):
                result["recovered_s"] = timeline[-1][0]

        async def replacement_served() -> bool:
            return any(pid not in before and texts > 0 for pid, texts in (await replicas.poll()).items())

        if await _wait(replacement_served, deadline):
            result["replacement_served_s"] = round(time.monotonic() - killed_at, 2)
    finally:
        stop.set()
        result["load"] = await load
    return {**result, "health_after_kill": sorted({s for _, s in timeline}), "health_timeline": timeline,
            "final_health": timeline[-1][1] if timeline else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--duration", type=float, default=120, help="seconds of overload")
    parser.add_argument("--overload", type=float, default=4.0, help="offered load as a multiple of capacity")
    parser.add_argument("--fault-seconds", type=float, default=60,
                        help="deadline after each replica kill for health to recover and the replacement to serve")
    parser.add_argument("--out", default=str(RESULTS / "reliability.json"))
    args = parser.parse_args()
    figures = long_run(args.model, args.duration, args.overload, args.fault_seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def long_run(model: str, duration: float, overload: float, fault_seconds: float) -> dict:
    """Start Ray and the app on loopback; measure capacity, overload it, check recovery, kill replicas."""
    import os

    import ray
    from ray import serve

    from serve_app.app import build_app, build_service
    from serve_app.core.config import EncoderConfig
    from serve_app.core.encoder import Encoder
    from tests.conftest import free_port

    encoder_args = {"model": model, "device": "cpu", "dtype": "fp32", "max_length": 128}
    limits = {"max_texts_per_request": 8, "max_pending_requests": 64, "request_timeout_s": 10}
    pool = text_pool(2000)
    checker = Checker(Encoder(EncoderConfig(**encoder_args)), pool)
    requests = make_requests(pool, 5000, max_texts=8, oversize_every=20)
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "limits": limits,
                     "encoder": {**encoder_args, "model": Path(model).name}}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        app_args = {"encoder": encoder_args, "limits": limits, "cache": {"backend": "off"}}  # load the model path
        serve.run(build_app(app_args), name="bge-m3", route_prefix="/")
        before = model_replicas()
        capacity = asyncio.run(closed_loop(url, requests, checker, 16, 10))
        rate = capacity.ok_per_s * overload
        flood = asyncio.run(open_loop(url, requests, checker, rate, duration))
        after = asyncio.run(closed_loop(url, requests, checker, 4, 5))
        figures.update(capacity=capacity.summary(), offered_per_s=round(rate, 1), overload=flood.summary(),
                       after_overload=after.summary(), restarted_by_overload=model_replicas() != before)
        figures["kill_single_replica"] = _fault(url, requests, checker, fault_seconds)
        serve.run(build_service(app_args, model_options={"num_replicas": 2}), name="bge-m3", route_prefix="/")
        figures["kill_one_of_two_replicas"] = _fault(url, requests, checker, fault_seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    return figures


def _fault(url: str, requests: list[list[str]], checker: Checker, deadline_s: float) -> dict:
    result = asyncio.run(kill_under_load(url, requests, checker, 8, deadline_s=deadline_s))
    return {**result, "load": result["load"].summary()}


if __name__ == "__main__":
    main()
