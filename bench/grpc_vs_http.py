"""gRPC vs HTTP on one running service: requests/s and server CPU per request, and the size and time of a
ColBERT answer as packed bytes vs JSON.

    python -m bench.grpc_vs_http --model .models/tiny --name grpc-vs-http [--modes haproxy,default]

For each mode (`haproxy`: Ray's high-throughput mode, HAProxy in front of HTTP; `default`: Serve's own
HTTP proxy) starts this project's service as `bench.serve_load` does (1 model replica, cache off) with its
gRPC proxy on, then at each concurrency runs the pairs of calls below back to back, HTTP then gRPC, on
distinct short queries (8-32 tokens):

- `tei`, one text per request: `POST /embed` vs `tei.v1.Embed/Embed` (what a TEI client sends);
- `native`, one and 32 texts per request, dense only: `POST /encode` vs `bge_m3.v1.Embedder/Encode`.

Reported per row: requests/s, texts/s, p50/p95 ms, errors, and the server's CPU ms per request (every
process of the `serve run` tree: proxy, HAProxy, ingress, model replica, Ray's own; the load generator is
this process, not counted). Then ColBERT: `--colbert-requests` sequential requests of 8 distinct passages
(128-256 tokens) with dense and ColBERT, as JSON floats, JSON base64, gRPC float32 and gRPC float16: the
answer's bytes and the median time from sending to holding the numpy arrays. Writes
bench/results/<name>.json (`bench.report` renders it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serve_app.grpc.protos import bge_m3_pb2, bge_m3_pb2_grpc, tei_pb2, tei_pb2_grpc

from . import serve_load, servers
from .workload import make_workload, short_queries

RESULTS = Path(__file__).resolve().parent / "results"
# (api, texts per request): the pairs each concurrency runs, HTTP then gRPC.
PAIRS = (("tei", 1), ("native", 1), ("native", 32))
COLBERT_PASSAGES = 8
COLBERT_FORMS = ("http-json", "http-base64", "grpc-f32", "grpc-f16")


def _groups(texts: list[str], per_request: int) -> list[list[str]]:
    return [texts[i: i + per_request] for i in range(0, len(texts) - per_request + 1, per_request)]


def http_bodies(api: str, groups: list[list[str]]) -> tuple[str, list[bytes]]:
    """The route and one JSON body per group."""
    if api == "tei":
        return "/embed", [json.dumps({"inputs": g[0] if len(g) == 1 else g}).encode() for g in groups]
    return "/encode", [json.dumps({"texts": g, "dense": True}).encode() for g in groups]


def grpc_calls(api: str, channel: grpc.aio.Channel, groups: list[list[str]]) -> tuple:
    """The stub method and one request message per group."""
    if api == "tei":
        return tei_pb2_grpc.EmbedStub(channel).Embed, [tei_pb2.EmbedRequest(inputs=g[0]) for g in groups]
    return bge_m3_pb2_grpc.EmbedderStub(channel).Encode, [bge_m3_pb2.EncodeRequest(texts=g, dense=True)
                                                          for g in groups]


async def http_phase(url: str, route: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """Load over HTTP (aiohttp, one connection per worker)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def call(i: int) -> bool:
            async with session.post(url + route, data=bodies[i], headers={"content-type": "application/json"}) as r:
                await r.read()
                return r.status == 200

        return serve_load.summary(await serve_load.drive(call, len(bodies), concurrency, seconds))


async def grpc_phase(target: str, api: str, groups: list[list[str]], concurrency: int, seconds: float) -> dict:
    """Load over gRPC (grpc.aio, one channel: HTTP/2 streams on one connection, as a gRPC client does)."""
    async with grpc.aio.insecure_channel(target) as channel:
        method, requests = grpc_calls(api, channel, groups)

        async def call(i: int) -> bool:
            await method(requests[i], timeout=300)
            return True

        return serve_load.summary(await serve_load.drive(call, len(requests), concurrency, seconds))


def measure(server: servers.Server, grpc_target: str, texts: list[str], levels: list[int], seconds: float,
            mode: str) -> list[dict]:
    """One row per (api, texts per request, concurrency, transport)."""
    rows = []
    for api, per_request in PAIRS:
        groups = _groups(texts, per_request)
        route, bodies = http_bodies(api, groups)
        for concurrency in levels:
            for transport in ("http", "grpc"):
                before = server.cpu_seconds()
                if transport == "http":
                    load = asyncio.run(http_phase(server.url, route, bodies, concurrency, seconds))
                else:
                    load = asyncio.run(grpc_phase(grpc_target, api, groups, concurrency, seconds))
                cpu_ms = (server.cpu_seconds() - before) * 1e3 / max(load["requests"], 1)
                rows.append({"mode": mode, "api": api, "texts_per_request": per_request, "concurrency": concurrency,
                             "transport": transport, **load, "texts_per_s": load["requests_per_s"] * per_request,
                             "server_cpu_ms_per_request": cpu_ms})
                print(f"  {mode} {api} x{per_request} c={concurrency} {transport}: "
                      f"{load['requests_per_s']:.0f} req/s, {cpu_ms:.2f} CPU ms/req, errors {load['errors']}",
                      flush=True)
    return rows


def colbert(url: str, grpc_target: str, passages: list[str], n_requests: int) -> dict:
    """Per form: the answer's bytes (median) and the median ms from sending to holding numpy arrays."""
    groups = _groups(passages, COLBERT_PASSAGES)[:n_requests]
    out: dict[str, dict] = {}
    with httpx.Client(base_url=url, timeout=300) as http, grpc.insecure_channel(grpc_target) as channel:
        embedder = bge_m3_pb2_grpc.EmbedderStub(channel)

        def via_http(group: list[str], encoding: str) -> tuple[int, list[np.ndarray]]:
            r = http.post("/encode", json={"texts": group, "dense": True, "colbert": True, "encoding_format": encoding})
            r.raise_for_status()
            rows = r.json()["data"]
            if encoding == "base64":
                arrays = [np.frombuffer(base64.b64decode(row["colbert"]), "<f4") for row in rows]
            else:
                arrays = [np.asarray(row["colbert"], np.float32) for row in rows]
            return len(r.content), arrays

        def via_grpc(group: list[str], encoding: int, dtype: str) -> tuple[int, list[np.ndarray]]:
            answer, call = embedder.Encode.with_call(bge_m3_pb2.EncodeRequest(
                texts=group, dense=True, colbert=True, colbert_encoding=encoding), timeout=300)
            arrays = [np.frombuffer(e.colbert, dtype).reshape(e.colbert_rows, -1) for e in answer.embeddings]
            return answer.ByteSize(), arrays

        forms = {"http-json": lambda g: via_http(g, "float"), "http-base64": lambda g: via_http(g, "base64"),
                 "grpc-f32": lambda g: via_grpc(g, bge_m3_pb2.VECTOR_ENCODING_FLOAT32, "<f4"),
                 "grpc-f16": lambda g: via_grpc(g, bge_m3_pb2.VECTOR_ENCODING_FLOAT16, "<f2")}
        for form in COLBERT_FORMS:  # warm-up: each form's path seen once
            forms[form](groups[0])
        times: dict[str, list[float]] = {form: [] for form in COLBERT_FORMS}
        sizes: dict[str, list[int]] = {form: [] for form in COLBERT_FORMS}
        for group in groups:  # the forms interleaved, so drift hits them alike
            for form in COLBERT_FORMS:
                start = time.perf_counter()
                size, _ = forms[form](group)
                times[form].append((time.perf_counter() - start) * 1e3)
                sizes[form].append(size)
        for form in COLBERT_FORMS:
            out[form] = {"bytes": int(statistics.median(sizes[form])), "ms": statistics.median(times[form])}
    return out


def _wait_grpc(target: str, timeout: float = 60) -> None:
    """Until the gRPC proxy answers health SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        while True:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(1)


def run_mode(args, mode: str, texts: list[str], passages: list[str], log_dir: Path) -> tuple[list[dict], dict, dict]:
    """Start the service in `mode`, measure, stop it."""
    config = servers.ours_config(args.model, args.port, num_threads=args.num_threads)
    config["grpc_options"]["port"] = args.grpc_port
    if args.coalesce_wait_s is not None:
        config["applications"][0]["args"]["limits"]["coalesce_wait_s"] = args.coalesce_wait_s
    server = servers.serve_run(f"ours-{mode}", config, args.port, log_dir, throughput_optimized=mode == "haproxy",
                               notes={"num_threads": args.num_threads})
    target = f"127.0.0.1:{args.grpc_port}"
    try:
        _wait_grpc(target)
        for api, per_request in PAIRS:  # warm-up: both transports and the batch sizes seen
            groups = _groups(texts, per_request)
            route, bodies = http_bodies(api, groups)
            asyncio.run(http_phase(server.url, route, bodies, max(args.levels), 2))
            asyncio.run(grpc_phase(target, api, groups, max(args.levels), 2))
        rows = measure(server, target, texts, args.levels, args.seconds, mode)
        colbert_row = colbert(server.url, target, passages, args.colbert_requests) if mode == args.modes[0] else {}
    finally:
        server.stop()
    return rows, colbert_row, server.notes


def main(argv: list[str] | None = None) -> dict:
    """Run both modes, print the rows, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="grpc-vs-http")
    p.add_argument("--modes", type=lambda s: s.split(","), default=["haproxy", "default"])
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=5.0, help="per row")
    p.add_argument("--n-texts", type=int, default=2048, help="distinct short queries cycled through")
    p.add_argument("--colbert-requests", type=int, default=20)
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--coalesce-wait-s", type=float, default=None, help="limits.coalesce_wait_s (default: the "
                   "typed default)")
    p.add_argument("--port", type=int, default=8413)
    p.add_argument("--grpc-port", type=int, default=9413)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = short_queries(args.n_texts, tokenizer, seed=3)
    passages = make_workload(COLBERT_PASSAGES * (args.colbert_requests + 1), tokenizer, seed=4,
                             mix=(("passage", 1.0, 128, 256),))
    log_dir = RESULTS / f"{args.name}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    colbert_rows: dict = {}
    for mode in args.modes:
        mode_rows, colbert_row, _ = run_mode(args, mode, texts, passages, log_dir)
        rows += mode_rows
        colbert_rows = colbert_rows or colbert_row
    import platform

    import psutil

    result = {"benchmark": "grpc-vs-http", "name": args.name, "model": args.model, "seconds": args.seconds,
              "command": "python -m bench.grpc_vs_http " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
              "colbert_passages": COLBERT_PASSAGES, "colbert_mode": args.modes[0], "rows": rows,
              "colbert": colbert_rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
