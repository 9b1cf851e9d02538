"""Load on the HTTP API: distinct texts, requests of them, a checker of every answer, and the drivers.

Owns what a client sees under load: `text_pool` and `make_requests` build the traffic, `Checker` holds
the encoder's own dense vector for each text, `open_loop` (arrivals at a fixed rate) and `closed_loop`
(clients that wait for their answer) send it to `/v1/embeddings` and fill a `LoadReport`.

Every request carries distinct texts; a 200 counts as correct only when each returned dense vector
equals the encoder's own vector for that text, in request order. A request that gets no answer within
the client timeout counts as hung. Statuses other than 200/413/429/503/504 are failures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import aiohttp
import numpy as np

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
        self.expected = {t: e.dense for t, e in zip(pool, encoder.encode(pool, dense=True, sparse=False), strict=True)}

    def correct(self, texts: list[str], body: dict) -> bool:
        data = body.get("data", [])
        if [d["index"] for d in data] != list(range(len(texts))):
            return False
        got = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
        return all(np.allclose(g, self.expected[t], atol=1e-4) for g, t in zip(got, texts, strict=True))


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
