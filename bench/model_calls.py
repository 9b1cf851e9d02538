"""The model replica's CPU per call and per request: what bounds the queries/s one replica can feed a GPU.

    python -m bench.model_calls --model .models/tiny --name model-calls \\
        [--per-call 1,4,16,64] [--in-flight 4] [--seconds 8]

Deploys the model deployment alone (one replica, cache off, one torch thread, Serve's gRPC transport for
handle calls as in high-throughput mode) and calls `encode_stream` from this process, as the ingress does,
with `--per-call` one-text requests of distinct short queries per call and `--in-flight` calls at a time.
Per level: the replica's CPU ms per request (psutil) less its forward passes' (`/info`
`compute.forward_cpu_s`), the non-forward CPU a GPU does not take off the host. A least-squares fit of
non-forward = per request + per call / requests per call splits it into what each call costs (Serve's
handling and gRPC messages of a streamed call, the hops of a batch) and what each request costs (its
objects, tokenizing, heads and outputs, pickling), so the requests per call a replica needs for a given
per-request budget can be read off. No HTTP, ingress or HAProxy run here: only the model replica is
measured.

The same levels are then run against Serve's floor (`ServeFloor`): a deployment with the same
`encode_stream` that computes nothing and streams back the same items (an admission item, then one real
result per request, packed as the model's are). What it costs is Serve's handling, gRPC and the wire format
alone; the model replica's non-forward CPU above it is this project's own (flow, batching, the hops to the
host and compute threads, heads and outputs, metrics). Writes bench/results/<name>.json and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

import psutil

from .servers import process_cpu_s

RESULTS = Path(__file__).resolve().parent / "results"


class ServeFloor:
    """A stand-in for the model deployment that computes nothing: each `encode_stream` call gets the model's
    items (admission, then `result` for every request), so a call costs only Serve and the wire."""

    def __init__(self, result: object):
        self._result = result

    async def encode_stream(self, requests: list):
        from serve_app.serving.updates import GroupUpdate

        yield GroupUpdate(None, [])
        yield GroupUpdate(None, [(i, self._result) for i in range(len(requests))])

    async def info(self) -> dict:
        """What `_levels` reads of a model replica: its pid, and no forward pass."""
        return {"pid": os.getpid(), "compute": {"forward_cpu_s": 0.0}}


def fit(rows: list[dict], key: str = "non_forward_ms") -> tuple[float, float]:
    """(per request ms, per call ms): least squares of `rows[key] = a + b / requests_per_call`."""
    xs = [1 / row["requests_per_call"] for row in rows]
    ys = [row[key] for row in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def table(result: dict) -> str:
    """The levels and the fit, as docs/benchmarks.md shows them."""
    out = [f"`{result['command']}` — {result['machine']}\n",
           "| requests per call | calls in flight | requests/s | model ms | forward ms | **non-forward ms** |"
           + (" Serve's floor ms | above the floor ms |" if "floor_ms" in result["rows"][0] else ""),
           "|---|---|---|---|---|---|" + ("---|---|" if "floor_ms" in result["rows"][0] else "")]
    for row in result["rows"]:
        line = (f"| {row['requests_per_call']} | {row['in_flight']} | {row['requests_per_s']:.0f} | "
                f"{row['model_ms']:.3f} | {row['forward_ms']:.3f} | **{row['non_forward_ms']:.3f}** |")
        if "floor_ms" in row:
            line += f" {row['floor_ms']:.3f} | {row['non_forward_ms'] - row['floor_ms']:.3f} |"
        out.append(line)
    per_request, per_call = result["fit"]["per_request_ms"], result["fit"]["per_call_ms"]
    fitted = (f"\nFit: non-forward = **{per_request:.3f} ms per request + {per_call:.2f} ms per call** / "
              "requests per call")
    if "floor" in result:
        floor = result["floor"]
        fitted += (f"; Serve's floor alone: {floor['per_request_ms']:.3f} ms per request + "
                   f"{floor['per_call_ms']:.2f} ms per call")
    out.append(fitted)
    return "\n".join(out)


async def _level(handle, texts: itertools.cycle, per_call: int, in_flight: int, seconds: float) -> int:
    """Calls of `per_call` requests, `in_flight` at a time, for `seconds`; the requests answered."""
    from serve_app.serving.schemas import EncodeRequest, EncodeResult

    stream = handle.options(stream=True)
    answered = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal answered
        while time.perf_counter() < stop:
            requests = [EncodeRequest(texts=[next(texts)], request_id=uuid.uuid4().hex) for _ in range(per_call)]
            async for update in stream.encode_stream.remote(requests):
                for _, answer in update.answers:
                    if not isinstance(answer, EncodeResult):
                        raise RuntimeError(f"a request failed: {answer!r}")
                    answered += 1

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return answered


async def _one_result(handle, texts: itertools.cycle) -> object:
    """One real answer of the model (a one-text request's `EncodeResult`), for `ServeFloor` to send back."""
    from serve_app.serving.schemas import EncodeRequest

    async for update in handle.options(stream=True).encode_stream.remote(
            [EncodeRequest(texts=[next(texts)], request_id=uuid.uuid4().hex)]):
        for _, answer in update.answers:
            return answer
    raise RuntimeError("the model answered nothing")


async def _levels(model, texts: itertools.cycle, per_call: list[int], in_flight: int,
                  seconds: float) -> tuple[list[dict], list[dict]]:
    """Each level after a warm-up against the model, then at once against `ServeFloor` (deployed here, sending
    back one of the model's real results), so both see the machine alike; per level, each replica's CPU and
    forward-pass CPU per request. (In one event loop: a handle in high-throughput mode routes from the loop
    it was first used in.)"""
    from ray import serve

    floor_app = serve.deployment(ServeFloor, max_ongoing_requests=256).bind(await _one_result(model, texts))
    await asyncio.to_thread(serve.run, floor_app, name="serve-floor", route_prefix=None)  # it blocks: off the loop
    floor = serve.get_app_handle("serve-floor")
    replicas = {name: (handle, (await handle.info.remote())["pid"]) for name, handle in (("model", model),
                                                                                         ("floor", floor))}
    for handle, _ in replicas.values():
        await _level(handle, texts, 16, in_flight, 3)  # warm-up
    rows: dict[str, list[dict]] = {"model": [], "floor": []}
    for n in per_call:
        for name, (handle, pid) in replicas.items():
            cpu_before, forward_before = process_cpu_s(pid), await _forward_cpu_s(handle)
            started = time.perf_counter()
            answered = await _level(handle, texts, n, in_flight, seconds)
            elapsed = time.perf_counter() - started
            model_ms = (process_cpu_s(pid) - cpu_before) * 1e3 / answered
            forward_ms = (await _forward_cpu_s(handle) - forward_before) * 1e3 / answered
            rows[name].append({"requests_per_call": n, "in_flight": in_flight,
                               "requests_per_s": round(answered / elapsed, 1), "model_ms": round(model_ms, 4),
                               "forward_ms": round(forward_ms, 4), "non_forward_ms": round(model_ms - forward_ms, 4)})
            print(json.dumps({"replica": name, **rows[name][-1]}))
    return rows["model"], rows["floor"]


async def _forward_cpu_s(handle) -> float:
    return (await handle.info.remote())["compute"]["forward_cpu_s"]


def main(argv: list[str] | None = None) -> dict:
    """Measure each level, fit the split, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="model-calls")
    p.add_argument("--per-call", default="1,4,16,64", help="comma-separated requests per call")
    p.add_argument("--in-flight", type=int, default=4, help="calls at a time (the ingress's model_calls_in_flight)")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args(argv)
    # As `serve run` in high-throughput mode: handle calls go over Serve's gRPC (set before Ray is imported).
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from serve_app.serving.config import AppArgs
    from serve_app.serving.deployments import build_model_deployment

    from .workload import short_queries

    texts = itertools.cycle(short_queries(8192, AutoTokenizer.from_pretrained(args.model), seed=0))
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        app_args = AppArgs.parse({"encoder": {"model": args.model, "num_threads": 1}, "cache": {"backend": "off"}})
        handle = serve.run(build_model_deployment(app_args, {"num_replicas": 1}), name="model-calls",
                           route_prefix=None)
        rows, floor_rows = asyncio.run(_levels(
            handle, texts, [int(x) for x in args.per_call.split(",")], args.in_flight, args.seconds))
    finally:
        ray.shutdown()  # Serve with it: its handles belong to the loop `asyncio.run` closed
    for row, floor_row in zip(rows, floor_rows, strict=True):
        row["floor_ms"] = floor_row["non_forward_ms"]
    per_request, per_call_ms = fit(rows)
    floor_request, floor_call = fit(rows, "floor_ms")
    result = {"benchmark": "model-calls", "name": args.name, "model": args.model,
              "command": "python -m bench.model_calls " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
              "rows": rows, "fit": {"per_request_ms": round(per_request, 4), "per_call_ms": round(per_call_ms, 3)},
              "floor": {"per_request_ms": round(floor_request, 4), "per_call_ms": round(floor_call, 3)}}
    print(table(result))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
