"""Goodput under overload: tokens/s answered in time, against the raw encoder's tokens/s, at and past capacity.

    python -m bench.goodput --model .models/full --duration 240 --name goodput
        [--inputs long,short] [--loads callers4,2x,4x] [--out-dir bench/results]
    python -m bench.report --results bench/results goodput                    # its table

Inputs (`--inputs`), texts drawn in tokens of the model's own tokenizer (bench/workload.py), every text
distinct across the whole run (the service caches embeddings; a repeated text would be a cache hit):

- `long`: requests of 6 passages of 2,200-2,400 tokens each, ~14k tokens per request;
- `medium`: requests of 6 passages of 450-550 tokens each, ~3k tokens per request;
- `short`: requests of 16 texts of 40-80 tokens each;
- `storm`: requests of 8 passages of 1,550-1,700 tokens each, ~13k tokens per request.

Capacity: the raw encoder (`serve_app.core.encoder.Encoder`) in this process, built from serve_config.yaml's
`args.encoder` as a model replica would build it (the model path swapped in; `num_threads` as Ray sets it
for the replica's `num_cpus` when the file leaves it null; device `cpu` when the replica has no GPU),
encoding one request's texts per call, as served, after a warm-up call on one text of the kind: real
tokens per second over at least `--capacity-requests` requests and `--capacity-seconds`. The encoder is
freed before the service starts; the service's `/info` must then show the same dtype, device, torch
threads and max_length.

Service: serve_config.yaml as shipped, started once (`serve run`, a Ray of its own) for all phases; it
differs from the shipped file in `args.encoder.model` only (and `http_options.port` if `--port` is not
8000); `--ha-proxy` starts it in Ray's high-throughput mode (environment variables, not the file).
Requests go to `POST /v1/embeddings` (dense vectors, base64: the OpenAI route, and the least client CPU
to parse on a box the client shares with the service).

Phases (`--loads`), each `--duration` seconds, per input kind, after a warm-up request of one text of
that kind (so the service's measured device speed is of that kind; one text: a whole long request can
outlast the deadline on a slow CPU):

- `callersN` (e.g. `callers4`): closed loop, N callers each sending its next request when the last one
  is answered. A polite client: after a 429 (or 503) a caller waits the `Retry-After` seconds first.
- `stormN` (e.g. `storm128`): a retry storm, closed loop of N callers that resend a request refused with
  429 at once (no Retry-After), as a badly written client does; with `--inputs storm` (8 passages of
  1,550-1,700 tokens, ~13k tokens a request). Targets: no admitted request times out (no 504), goodput
  >= 0.7x capacity.
- `Kx` (e.g. `2x`, `4x`): open loop, Poisson arrivals (seeded) at K x capacity tokens/s divided by the
  mean tokens of a request; every request independent, a 429 is not retried.

The client timeout is the service's request timeout (`/info` limits.request_timeout_s, 60 s shipped)
+ 30 s, so the server's own 504 is seen. After a phase's window the client sends nothing new but waits
for every request in flight (up to the client timeout), then waits until the service is idle (one-text
probes until one is answered within 2 s: a forward pass already on the device runs to its end even when
its callers are gone) so phases do not overlap.

Counted per (input, phase), over the phase window W = `--duration` seconds from its first request:

- offered tokens/s: tokens of the requests sent / W (and as a multiple of capacity);
- goodput: tokens of the requests answered 200 within the deadline (latency <= request_timeout_s) whose
  answer arrived inside the window, / W. A 200 arriving after the window is waited for and counted in
  its status and latency figures, but not in goodput (its tokens are reported as
  `goodput_tokens_after_window`): a phase's goodput is what it delivered in its own window;
- goodput / capacity;
- status counts and shares of the requests sent (200, 429, 504, other: 413, 503, transport errors,
  client timeouts), 429s also by error code (`would_miss_deadline`: admission by cost; `overloaded`:
  queue bounds);
- p50/p95 latency of the 200s; time to the first byte of each 429 (request sent to status line and
  headers received, before the body is read): p50, p95, max and the share within 50 ms;
- the 504s: admission refuses with 429, so every 504 is a request that was admitted and then missed
  its deadline;
- open loop: the client's lag behind the arrival schedule (p95, max), which says whether the offered
  load was really offered.

Prompt tokens are counted here when the texts are generated (special tokens included, as the service
counts them); a 200 whose `usage.prompt_tokens` differs is counted in `token_count_mismatches`.

Writes `<out-dir>/<name>.json` (the figures, the machine, the model, the encoder settings, the command)
and `<out-dir>/<name>-requests.json` (every request: sent at, status, latency, time to first byte,
tokens), then prints the table of `bench.report.goodput_table`. Targets (the issue): goodput >= 0.8x
capacity at 4x, no 504 for an admitted request, every 429 within 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml

from serve_app.core.config import EncoderConfig

from . import servers
from .report import goodput_table
from .workload import _Counter, _text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL_DEPLOYMENT = "EmbeddingModel"
ROUTE = "/v1/embeddings"
CLIENT_TIMEOUT_MARGIN_S = 30.0  # past the server's deadline, so its own 504 reaches the client
TTFB_GOAL_S = 0.050  # every 429 within 50 ms (the issue)
IDLE_PROBE_S = 2.0  # a one-text probe answered this fast means nothing is queued ahead of it
IDLE_PAUSE_S = 2.0  # after the service is idle, before the next phase
IDLE_WAIT_X = 2  # x the client timeout: the longest wait for idle (a forward pass may outlast the deadline)


@dataclass(frozen=True)
class Shape:
    """One request of an input kind: `texts` texts of `lo`..`hi` tokens each (special tokens included)."""

    texts: int
    lo: int
    hi: int


# "long" is the load; "medium" the longest passages whose request a 2-core CPU finishes well within
# the shipped 60 s deadline (a "long" request alone takes ~210 s there: docs/reliability.md).
SHAPES = {"long": Shape(6, 2200, 2400), "medium": Shape(6, 450, 550), "short": Shape(16, 40, 80),
          "storm": Shape(8, 1550, 1700)}  # ~13k tokens a request: the retry storm's (docs/reliability.md)
PROBE = Shape(1, 40, 80)


def _one_text(shape: Shape) -> Shape:
    """A request of one text of `shape`'s length: warm-ups."""
    return Shape(1, shape.lo, shape.hi)


@dataclass(frozen=True)
class Request:
    """A ready-to-send request: its prompt tokens (counted here) and its JSON body."""

    tokens: int
    body: bytes


@dataclass(frozen=True)
class Load:
    """A phase: a closed loop of `callers`, or an open loop at `times_capacity` x capacity."""

    name: str
    callers: int | None = None
    times_capacity: float | None = None
    storm: bool = False  # closed loop whose callers resend a refused request at once (no Retry-After)


def parse_load(name: str) -> Load:
    """`callers4` -> closed loop of 4 callers; `2x` / `4.5x` -> open loop at that multiple of capacity."""
    if m := re.fullmatch(r"callers(\d+)", name):
        return Load(name, callers=int(m[1]))
    if m := re.fullmatch(r"storm(\d+)", name):
        return Load(name, callers=int(m[1]), storm=True)
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)x", name):
        return Load(name, times_capacity=float(m[1]))
    raise ValueError(f"unknown load {name!r}: callersN (closed loop), stormN (closed loop resending a refused "
                     "request at once) or Kx (open loop at K x capacity)")


class TextSource:
    """Distinct texts to a token target, with the model's tokenizer, as ready requests. One source feeds
    the whole run (capacity, warm-ups, phases, idle probes), so no text is ever sent twice."""

    def __init__(self, tokenizer, model_name: str, max_length: int, seed: int):
        self._rng = random.Random(seed)
        self._count = _Counter(tokenizer)
        self._model_name, self._max_length = model_name, max_length
        self._seen: set[str] = set()

    def texts(self, shape: Shape) -> tuple[list[str], int]:
        """`shape.texts` new texts and their tokens in all."""
        texts: list[str] = []
        tokens = 0
        while len(texts) < shape.texts:
            text = _text(self._rng, self._count, shape.lo, shape.hi)
            n = self._count.text(text)
            # A repeat would be a cache hit; a text over max_length would be cut (fewer tokens than counted).
            if text in self._seen or n > self._max_length:
                continue
            self._seen.add(text)
            texts.append(text)
            tokens += n
        return texts, tokens

    def request(self, shape: Shape) -> Request:
        """A new `/v1/embeddings` request of `shape`."""
        texts, tokens = self.texts(shape)
        body = {"input": texts, "model": self._model_name, "encoding_format": "base64"}
        return Request(tokens, json.dumps(body).encode())


class Pool:
    """Pre-generated requests of one phase, taken in order; running out is an error, never a repeat."""

    def __init__(self, requests: list[Request], what: str):
        self._requests, self._what = requests, what
        self._next: Iterator[Request] = iter(requests)

    def __len__(self) -> int:
        return len(self._requests)

    def take(self) -> Request:
        """The next request; `RuntimeError` once all were sent."""
        try:
            return next(self._next)
        except StopIteration:
            raise RuntimeError(f"{self._what}: all {len(self._requests)} pre-generated requests were sent; "
                               "raise --pool-margin") from None


def served_config(model: str, port: int) -> dict:
    """serve_config.yaml as shipped, with the model path (and the port) swapped in."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["encoder"]["model"] = model
    return config


def config_changes(config: dict) -> dict[str, object]:
    """The settings of `config` that differ from serve_config.yaml as shipped, by dotted path."""
    def flat(node: object, prefix: str = "") -> dict[str, object]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        if isinstance(node, list):
            return {k: v for i, value in enumerate(node) for k, v in flat(value, f"{prefix}{i}.").items()}
        return {prefix.rstrip("."): node}

    shipped, used = flat(yaml.safe_load((ROOT / "serve_config.yaml").read_text())), flat(config)
    return {key: value for key, value in used.items() if shipped.get(key) != value}


def model_deployment(config: dict) -> dict:
    """The `EmbeddingModel` entry of the config's `deployments:`."""
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == MODEL_DEPLOYMENT)


def served_encoder_config(config: dict) -> EncoderConfig:
    """The `EncoderConfig` a model replica of `config` runs with, for the in-process capacity run."""
    settings = dict(config["applications"][0]["args"]["encoder"])
    actor = model_deployment(config).get("ray_actor_options", {})
    if settings.get("num_threads") is None:
        # Ray sets the replica's OMP_NUM_THREADS to its num_cpus (1 for a fraction) unless the environment has one.
        settings["num_threads"] = int(os.environ.get("OMP_NUM_THREADS") or max(1, int(actor.get("num_cpus", 1))))
    if settings.get("device", "auto") == "auto" and not actor.get("num_gpus"):
        settings["device"] = "cpu"  # a replica without num_gpus sees no GPU
    return EncoderConfig(**settings)


def check_shapes(shapes: dict[str, Shape], max_length: int, max_texts: int, max_request_tokens: int) -> None:
    """Fail before any load when a request of these shapes would be cut or refused by the service's limits."""
    for kind, shape in shapes.items():
        problems = []
        if shape.hi > max_length:
            problems.append(f"texts of up to {shape.hi} tokens exceed max_length {max_length}")
        if shape.texts > max_texts:
            problems.append(f"{shape.texts} texts exceed max_texts_per_request {max_texts}")
        # A text may overshoot its target by a few tokens; a 2% margin keeps such a request under the budget.
        if shape.texts * shape.hi * 1.02 > max_request_tokens:
            problems.append(f"~{shape.texts * shape.hi} tokens per request exceed the queue budget "
                            f"{max_request_tokens} (a 413)")
        if problems:
            raise SystemExit(f"{kind} requests do not fit the service: " + "; ".join(problems))


def measure_capacity(config: EncoderConfig, source: TextSource, shapes: dict[str, Shape], min_requests: int,
                     min_seconds: float) -> tuple[dict[str, dict], dict]:
    """The raw encoder's real tokens/s per input kind (one encode call per request, as served: dense only, as
    `/v1/embeddings`), and its settings. The encoder is freed before returning (the service needs the memory)."""
    from serve_app.core.encoder import Encoder

    encoder = Encoder(config)
    described = encoder.describe()
    capacity = {}
    try:
        for kind, shape in shapes.items():
            # Warm-up (first-call allocations, lazy init) on one text: a whole long request is minutes on a CPU.
            encoder.encode(source.texts(_one_text(shape))[0], sparse=False)
            tokens, seconds, requests = 0, 0.0, 0
            while requests < min_requests or seconds < min_seconds:
                texts, _ = source.texts(shape)  # generated outside the timed call
                start = time.perf_counter()
                out = encoder.encode(texts, sparse=False)
                seconds += time.perf_counter() - start
                tokens += sum(e.n_tokens for e in out)
                requests += 1
            capacity[kind] = {"tokens_per_s": tokens / seconds, "requests": requests, "seconds": round(seconds, 3),
                              "tokens_per_request": tokens / requests, "seconds_per_request": seconds / requests}
            print(f"  capacity {kind}: {capacity[kind]['tokens_per_s']:.0f} tokens/s "
                  f"({requests} requests, {tokens / requests:.0f} tokens each)", flush=True)
    finally:
        del encoder
        gc.collect()
    return capacity, described


def arrivals(rate: float, duration: float, rng: random.Random) -> list[float]:
    """Poisson arrival times (seconds from the start) at `rate` per second within `duration`."""
    times, t = [], rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def closed_loop_estimate(load: Load, capacity: dict, duration: float, margin: float) -> int:
    """Requests a closed loop may send in `duration`: its 200s cannot outpace capacity, and each refusal
    costs its caller at least 1 s (a 429's Retry-After, or the wait after a 413), however long a request
    takes to compute: a request too long for its deadline is refused at once, again and again."""
    callers = load.callers or 1
    answered = duration / capacity["seconds_per_request"]
    refused = 0 if load.storm else callers * duration  # a storm resends the refused request itself
    return math.ceil(margin * (answered + refused)) + callers


def retry_after(headers) -> float:
    """The `Retry-After` seconds of an answer (1 s when absent or not a number of seconds)."""
    try:
        return max(0.0, float(headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


async def send(session: aiohttp.ClientSession, url: str, request: Request, timeout: float, t0: float,
               scheduled: float | None = None) -> dict:
    """Post one request; its record: sent (s from the phase start), status (or "error" / "client_timeout"),
    latency, time to first byte (status line and headers in), tokens, and what the answer says."""
    start = time.perf_counter()
    record: dict = {"sent_s": start - t0, "tokens": request.tokens}
    if scheduled is not None:
        record["lag_s"] = start - t0 - scheduled
    body = b""
    try:
        async with session.post(url, data=request.body, headers={"content-type": "application/json"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            record["ttfb_s"] = time.perf_counter() - start  # the context is entered once the headers are in
            record["status"] = str(response.status)
            if "Retry-After" in response.headers:
                record["retry_after_s"] = retry_after(response.headers)
            body = await response.read()
    except asyncio.TimeoutError:
        record["status"] = "client_timeout"
    except aiohttp.ClientError:
        record["status"] = "error"
    record["latency_s"] = time.perf_counter() - start
    if record["status"] not in ("client_timeout", "error"):
        _read_answer(record, body)
    return record


def _read_answer(record: dict, body: bytes) -> None:
    """The served prompt tokens of a 200, the error code of anything else (kept in `record`)."""
    try:
        answer = json.loads(body)
    except ValueError:
        record["code"] = "not_json"
        return
    if record["status"] == "200":
        record["served_tokens"] = answer.get("usage", {}).get("prompt_tokens")
    elif isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        record["code"] = answer["error"].get("code")


def _session() -> aiohttp.ClientSession:
    # No connection limit: an open loop must not queue in the client's pool.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def closed_phase(url: str, pool: Pool, callers: int, duration: float, timeout: float,
                       storm: bool = False) -> list[dict]:
    """`callers` callers sending back to back for `duration`; after a 429/503 a caller waits its Retry-After,
    after a 413 or a transport error 1 s. A `storm`'s callers resend a request refused with 429 at once, as a
    badly written client does, and take a new one only once it is answered otherwise."""
    records: list[dict] = []
    async with _session() as session:
        t0 = time.perf_counter()

        async def caller() -> None:
            request = None
            while time.perf_counter() - t0 < duration:
                request = request or pool.take()
                record = await send(session, url, request, timeout, t0)
                records.append(record)
                if storm:
                    request = request if record["status"] == "429" else None
                    continue
                request = None
                # A refusal for good (413: e.g. a request longer than its deadline allows) has no Retry-After:
                # the caller moves on to its next request after a second, as after a transport error.
                wait = record.get("retry_after_s", 1.0 if record["status"] in ("error", "413") else 0.0)
                if wait:  # never past the window: a wait there would only delay the phase's end
                    await asyncio.sleep(min(wait, max(0.0, duration - (time.perf_counter() - t0))))

        await asyncio.gather(*(caller() for _ in range(callers)))
    return records


async def open_phase(url: str, pool: Pool, schedule: list[float], timeout: float) -> list[dict]:
    """Each request sent at its arrival time whatever the answers so far; all awaited before returning."""
    async with _session() as session:
        t0 = time.perf_counter()
        tasks = []
        for at in schedule:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, url, pool.take(), timeout, t0, scheduled=at)))
        return list(await asyncio.gather(*tasks))


async def wait_idle(url: str, source: TextSource, timeout: float) -> dict:
    """Send one-text probes until one is answered 200 within IDLE_PROBE_S (nothing queued ahead of it), then
    pause; gives up after `timeout` (noted in the result, the run goes on)."""
    start, probes = time.perf_counter(), 0
    async with _session() as session:
        while time.perf_counter() - start < timeout:
            record = await send(session, url, source.request(PROBE), timeout, start)
            probes += 1
            if record["status"] == "200" and record["latency_s"] < IDLE_PROBE_S:
                await asyncio.sleep(IDLE_PAUSE_S)
                return {"idle_after_s": round(time.perf_counter() - start - IDLE_PAUSE_S, 2), "probes": probes}
            await asyncio.sleep(record.get("retry_after_s", 1.0))
    print(f"  warning: the service was not idle after {timeout:.0f} s", flush=True)
    return {"idle_after_s": None, "probes": probes}


def _pct(values: list[float], q: float, scale: float = 1.0) -> float | None:
    return round(float(np.percentile(values, q)) * scale, 4) if values else None


def summarize(records: list[dict], duration: float, capacity_tps: float, deadline_s: float) -> dict:
    """The figures of one phase (module docstring, "Counted")."""
    n = len(records)
    statuses = Counter(r["status"] for r in records)
    ok = [r for r in records if r["status"] == "200"]
    in_deadline = [r for r in ok if r["latency_s"] <= deadline_s]
    in_window = [r for r in in_deadline if r["sent_s"] + r["latency_s"] <= duration]
    refused = [r for r in records if r["status"] == "429"]
    ttfb_429 = [r["ttfb_s"] for r in refused]
    offered = sum(r["tokens"] for r in records) / duration
    goodput = sum(r["tokens"] for r in in_window) / duration
    other = n - statuses["200"] - statuses["429"] - statuses["504"]
    lags = [r["lag_s"] for r in records if "lag_s" in r]
    figures = {
        "requests": n,
        "offered_tokens_per_s": round(offered, 1), "offered_x_capacity": round(offered / capacity_tps, 3),
        "goodput_tokens_per_s": round(goodput, 1), "goodput_x_capacity": round(goodput / capacity_tps, 3),
        "goodput_tokens_after_window": sum(r["tokens"] for r in in_deadline) - sum(r["tokens"] for r in in_window),
        "statuses": dict(sorted(statuses.items())),
        "shares": {key: round(count / n, 4) if n else None
                   for key, count in (("200", statuses["200"]), ("429", statuses["429"]), ("504", statuses["504"]),
                                      ("other", other))},
        "late_200": len(ok) - len(in_deadline), "r504": statuses["504"],
        "ok_p50_s": _pct([r["latency_s"] for r in ok], 50), "ok_p95_s": _pct([r["latency_s"] for r in ok], 95),
        "r429_codes": dict(Counter(str(r.get("code")) for r in refused)),
        "r429_ttfb_p50_ms": _pct(ttfb_429, 50, 1e3), "r429_ttfb_p95_ms": _pct(ttfb_429, 95, 1e3),
        "r429_ttfb_max_ms": round(max(ttfb_429) * 1e3, 2) if ttfb_429 else None,
        "r429_within_50ms": round(sum(t <= TTFB_GOAL_S for t in ttfb_429) / len(ttfb_429), 4) if ttfb_429 else None,
        "token_count_mismatches": sum(r.get("served_tokens") != r["tokens"] for r in ok),
    }
    if lags:
        figures.update(send_lag_p95_s=_pct(lags, 95), send_lag_max_s=round(max(lags), 3))
    return figures


async def run_kind(url: str, kind: str, loads: list[Load], pools: dict[str, Pool], schedules: dict[str, list[float]],
                   source: TextSource, capacity: dict, args: argparse.Namespace, deadline_s: float,
                   on_phase) -> None:
    """Warm up with one request of `kind`, then run its phases, the service idle before each."""
    timeout = deadline_s + CLIENT_TIMEOUT_MARGIN_S
    async with _session() as session:  # warm-up: the service measures its device speed on this kind
        warm = await send(session, url, source.request(_one_text(SHAPES[kind])), timeout, time.perf_counter())
    print(f"  {kind} warm-up: {warm['status']} in {warm['latency_s']:.1f} s", flush=True)
    idle = await wait_idle(url, source, IDLE_WAIT_X * timeout)
    for load in loads:
        pool = pools[load.name]
        if load.callers is not None:
            records = await closed_phase(url, pool, load.callers, args.duration, timeout, storm=load.storm)
        else:
            records = await open_phase(url, pool, schedules[load.name], timeout)
        row = {"input": kind, "load": load.name, "mode": "closed" if load.callers else "open",
               "callers": load.callers, "times_capacity": load.times_capacity, "duration_s": args.duration,
               "pre_generated": len(pool), "idle_before": idle,
               **summarize(records, args.duration, capacity["tokens_per_s"], deadline_s)}
        if load.times_capacity is not None:
            row["target_requests_per_s"] = round(load.times_capacity * capacity["tokens_per_s"]
                                                 / capacity["tokens_per_request"], 4)
        idle = await wait_idle(url, source, IDLE_WAIT_X * timeout)
        row["idle_after"] = idle
        on_phase(row, records)
        print(f"  {kind} {load.name}: {row['requests']} requests, offered {row['offered_x_capacity']:.2f}x, "
              f"goodput {row['goodput_x_capacity']:.2f}x, statuses {row['statuses']}", flush=True)


def pre_generate(source: TextSource, kinds: list[str], loads: list[Load], capacity: dict[str, dict],
                 args: argparse.Namespace) -> tuple[dict[str, dict[str, Pool]], dict[str, dict[str, list[float]]]]:
    """Every phase's requests before any load (generating them under load would take the service's CPU):
    an open loop's exactly (its seeded arrival schedule), a closed loop's by `closed_loop_estimate`."""
    pools: dict[str, dict[str, Pool]] = {}
    schedules: dict[str, dict[str, list[float]]] = {}
    for kind in kinds:
        pools[kind], schedules[kind] = {}, {}
        cap = capacity[kind]
        for load in loads:
            if load.times_capacity is not None:
                rate = load.times_capacity * cap["tokens_per_s"] / cap["tokens_per_request"]
                rng = random.Random(f"{args.seed}-{kind}-{load.name}")  # the same schedule run after run
                schedules[kind][load.name] = arrivals(rate, args.duration, rng)
                n = len(schedules[kind][load.name])
            else:
                n = closed_loop_estimate(load, cap, args.duration, args.pool_margin)
            start = time.perf_counter()
            pools[kind][load.name] = Pool([source.request(SHAPES[kind]) for _ in range(n)], f"{kind} {load.name}")
            print(f"  generated {n} {kind} requests for {load.name} in {time.perf_counter() - start:.1f} s",
                  flush=True)
    return pools, schedules


def check_served(info: dict, encoder: dict, model_name: str) -> None:
    """Fail when the service does not run the encoder settings the capacity was measured with."""
    keys = ("dtype", "device", "torch_threads", "max_length")
    differ = {k: (encoder[k], info.get(k)) for k in keys if str(encoder[k]) != str(info.get(k))}
    if info.get("served_model_name") != model_name:
        differ["served_model_name"] = (model_name, info.get("served_model_name"))
    if differ:
        raise RuntimeError(f"the service differs from the capacity run (capacity, served): {differ}")


def main(argv: list[str] | None = None) -> dict:
    """Measure capacity, start the service, run the phases; write and print the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (e.g. .models/full)")
    p.add_argument("--name", default="goodput", help="results file name, without .json")
    p.add_argument("--inputs", default="long,short", help=f"input kinds, of {', '.join(SHAPES)}")
    p.add_argument("--loads", default="callers4,2x,4x", help="phases: callersN (closed loop), Kx (open loop)")
    p.add_argument("--duration", type=float, default=240, help="seconds per phase")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--port", type=int, default=8000, help="the service's port (serve_config.yaml: 8000)")
    p.add_argument("--ha-proxy", action="store_true", help="Ray's high-throughput mode (HAProxy in front)")
    p.add_argument("--capacity-requests", type=int, default=3, help="at least this many timed encode calls")
    p.add_argument("--capacity-seconds", type=float, default=10, help="and at least this many seconds of them")
    p.add_argument("--pool-margin", type=float, default=1.5, help="closed loops: requests pre-generated vs the "
                   "estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=600, help="seconds the service may take to get healthy")
    args = p.parse_args(argv)
    kinds = args.inputs.split(",")
    if unknown := set(kinds) - set(SHAPES):
        raise SystemExit(f"unknown inputs {sorted(unknown)}; known: {', '.join(SHAPES)}")
    loads = [parse_load(name) for name in args.loads.split(",")]
    shapes = {kind: SHAPES[kind] for kind in kinds}

    from transformers import AutoTokenizer

    config = served_config(args.model, args.port)
    app = config["applications"][0]
    encoder_config = served_encoder_config(config)
    check_shapes(shapes, encoder_config.max_length, app["args"]["limits"]["max_texts_per_request"],
                 model_deployment(config)["user_config"]["max_queue_tokens"])
    source = TextSource(AutoTokenizer.from_pretrained(args.model), app["args"]["served_model_name"],
                        encoder_config.max_length, args.seed)
    capacity, encoder = measure_capacity(encoder_config, source, shapes, args.capacity_requests, args.capacity_seconds)
    pools, schedules = pre_generate(source, kinds, loads, capacity, args)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = args.out_dir / f"{args.name}-logs"
    log_dir.mkdir(exist_ok=True)
    result: dict = {
        "benchmark": "goodput", "name": args.name,
        "command": "python -m bench.goodput " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
        "model": Path(args.model).name, "encoder": {**encoder_config.model_dump(), "model": args.model},
        "encoder_described": {k: v for k, v in encoder.items() if k != "model"},
        "service": {"config_changes": config_changes(config), "ha_proxy": args.ha_proxy, "route": ROUTE},
        "shapes": {kind: vars(shape) for kind, shape in shapes.items()}, "capacity": capacity,
        "duration_s": args.duration, "rows": [],
    }
    requests: dict[str, list[dict]] = {}

    def write() -> None:
        (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=1))
        (args.out_dir / f"{args.name}-requests.json").write_text(json.dumps(requests))

    def on_phase(row: dict, records: list[dict]) -> None:  # keep what is measured, phase by phase
        result["rows"].append(row)
        requests[f"{row['input']}/{row['load']}"] = records
        write()

    server = servers.serve_run("goodput", config, args.port, log_dir, throughput_optimized=args.ha_proxy,
                               timeout=args.start_timeout)
    try:
        info = httpx.get(f"{server.url}/info", timeout=60).json()
        check_served(info, encoder, app["args"]["served_model_name"])
        check_shapes(shapes, info["max_length"], info["limits"]["max_texts_per_request"], info["max_batch_tokens"])
        deadline_s = float(info["limits"]["request_timeout_s"])
        result["service"].update(limits=info["limits"], batching=info["batching"], version=info.get("version"))
        result.update(deadline_s=deadline_s, client_timeout_s=deadline_s + CLIENT_TIMEOUT_MARGIN_S,
                      model_info={k: info.get(k) for k in ("model", "revision", "dim", "dtype", "device",
                                                           "torch_threads", "max_length", "max_forward_tokens")})
        for kind in kinds:
            asyncio.run(run_kind(server.url + ROUTE, kind, loads, pools[kind], schedules[kind], source,
                                 capacity[kind], args, deadline_s, on_phase))
    finally:
        server.stop()
    write()
    print(goodput_table(result))
    return result


if __name__ == "__main__":
    main()
