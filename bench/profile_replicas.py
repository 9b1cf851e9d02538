"""Where a served request's CPU goes, per process, with the model replica's forward pass taken out.

    python -m bench.profile_replicas --model .models/tiny --name cpu-split \\
        [--texts-per-request 1,8] [--concurrency 16,64,256] [--limit model_calls_in_flight=1 ...]

Starts this project's service as `bench.serve_load` does (`ours`: high-throughput mode, 1 model replica, cache
off, one torch thread), then for each number of texts per request (warmed first) and each concurrency posts
`/v1/embeddings` requests of distinct short queries for `--seconds` while py-spy samples both replicas
(`--limit` changes one of the ingress's `args.limits` for the run). Reported per level: requests/s, the
requests per model call (the ingress's coalescing, from `/info` `counts`), each process's CPU ms per request
(psutil; py-spy's own cost included), each replica's samples by kind of work (`CATEGORIES`, the first match
from the innermost frame out), and the model replica's CPU split (`split`) into its forward passes (the CPU
the threads running them spent inside them, `/info` `compute.forward_cpu_s`; one torch thread, so none runs
elsewhere) and the rest, with the compute thread's own work around the forward passes (padding, heads,
outputs: `compute.cpu_s` less the forward) shown apart. On a GPU the forward pass costs the host little, so
the rest is what bounds the requests/s one replica can feed it. (py-spy's share of samples is not used for the
split: it counts threads waiting in C, in epoll and condition waits, as busy.) Writes
bench/results/<name>.json (`bench.report` renders it; the one-level runs committed before the sweep render as
before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import psutil
import yaml

from . import serve_load, servers
from .offline_throughput import top_functions
from .workload import short_queries

RESULTS = Path(__file__).resolve().parent / "results"
# (kind of work, substrings of a frame "function (file:line)"); a sample counts for the first kind found
# walking from the innermost frame outwards.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("forward pass (torch, transformers)", ("torch/", "transformers/")),
    ("tokenizer", ("tokenization.py",)),
    ("Ray metrics", ("ray/util/metrics.py", "ray/serve/metrics.py")),
    ("logging", ("logging/__init__",)),
    ("serve.batch", ("ray/serve/batching.py",)),
    ("pydantic", ("pydantic",)),
    ("serialization (pickle, orjson)", ("cloudpickle", "serialization.py", "pickle")),
    ("FastAPI / Starlette", ("fastapi/", "starlette/")),
    ("uvicorn (HTTP parse, send)", ("uvicorn/",)),
    ("this project's code", ("serve_app/",)),
    ("Ray replica, router, gRPC", ("ray/serve/", "grpc/", "ray/_private/authentication")),
    ("asyncio, threads, executor queues", ("asyncio/", "concurrent/futures", "threading.py", "contextlib")),
    ("no Python frame (Ray core loop)", ("Worker.main_loop",)),
]
PROCESSES = {"ingress": "ServeReplica:bge-m3:Ingress", "model": "ServeReplica:bge-m3:EmbeddingModel"}


def categorize(path: Path) -> dict[str, float]:
    """Share of a py-spy raw profile's samples per kind of work."""
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        kind = next((name for frame in reversed(frames) for name, keys in CATEGORIES
                     if any(k in frame for k in keys)), "other")
        counts[kind] += int(n)
    total = sum(counts.values())
    return {kind: round(n / total, 3) for kind, n in counts.most_common()}


def _replica_pids(root: int) -> dict[str, int]:
    found = {}
    for pid, cmd in servers.commands_under(root):
        for name, marker in PROCESSES.items():
            if marker in cmd:
                found[name] = pid
        if cmd.split(" ")[0].endswith("haproxy"):
            found["haproxy"] = pid
    return found


def _model_totals(base_url: str) -> tuple[float, float, int, int]:
    """The model replica's totals so far (`/info`): CPU seconds in its compute thread's steps and in forward
    passes, the calls it received and their requests."""
    reply = httpx.get(f"{base_url}/info", timeout=30)
    reply.raise_for_status()  # a refused /info must stop the run, not read as a missing field
    info = reply.json()
    compute, counts = info["compute"], info["counts"]
    return (float(compute["cpu_s"]), float(compute["forward_cpu_s"]), int(counts.get("calls", 0)),
            int(counts.get("requests_received", 0)))


def _profiled_load(url: str, payloads: list[bytes], counts: list[int], concurrency: int, seconds: float,
                   pids: dict[str, int], out: Path, spy: str, base_url: str) -> dict:
    """One load level with py-spy on both replicas: requests/s, CPU ms per request per process, the model
    replica's compute-thread and forward-pass CPU ms per request, and each replica's samples by kind of work
    (`out/<process>.txt`)."""
    spies = [subprocess.Popen([spy, "record", "-p", str(pids[name]), "-d", str(int(seconds)), "-r", "50",
                               "-f", "raw", "--nonblocking", "-o", str(out / f"{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for name in PROCESSES]
    totals_before = _model_totals(base_url)
    before = {name: servers.process_cpu_s(pid) for name, pid in pids.items()}
    load = asyncio.run(serve_load._load(url, payloads, counts, concurrency, seconds, None))
    cpu = {name: round((servers.process_cpu_s(pid) - before[name]) * 1e3 / load["requests"], 3)
           for name, pid in pids.items()}
    # Requests still in flight when the load stops are finished meanwhile: a bias of at most c requests.
    compute_s, forward_s, calls, received = (after - was for after, was in
                                             zip(_model_totals(base_url), totals_before, strict=True))
    compute_ms, forward_ms = (x * 1e3 / load["requests"] for x in (compute_s, forward_s))
    for s in spies:
        s.wait(60)
    return {"requests_per_s": round(load["requests_per_s"], 1), "p50_ms": round(load["p50_ms"], 1),
            "cpu_ms_per_request": cpu, "compute_thread_ms": round(compute_ms, 3), "forward_ms": round(forward_ms, 3),
            "requests_per_model_call": round(received / max(calls, 1), 1),
            "kinds": {name: categorize(out / f"{name}.txt") for name in PROCESSES},
            "top": {name: top_functions(out / f"{name}.txt", 8) for name in PROCESSES}}


def split(row: dict) -> dict:
    """A level's model replica CPU per request: its forward passes, the compute thread's work around them
    (padding, heads, outputs to arrays) and all it does outside the forward passes, that last the figure that
    bounds a GPU (whose forward pass costs the host little)."""
    model_ms, forward = row["cpu_ms_per_request"]["model"], row["forward_ms"]
    return {"model_forward_ms": round(forward, 3), "compute_rest_ms": round(row["compute_thread_ms"] - forward, 3),
            "model_non_forward_ms": round(model_ms - forward, 3)}


def main(argv: list[str] | None = None) -> dict:
    """Profile each level (texts per request x concurrency), print the split, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="cpu-split")
    p.add_argument("--texts-per-request", default="1,8", help="comma-separated")
    p.add_argument("--concurrency", default="16,64,256", help="comma-separated")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--port", type=int, default=8411)
    p.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                   help="one of args.limits for this run (repeatable), e.g. model_calls_in_flight=1")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    per_request = [int(x) for x in args.texts_per_request.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    # Distinct texts for every request of the longest level (the cache is off; the encoder runs identical
    # token sequences once, so repeats would flatter the model replica).
    texts = short_queries(4096, AutoTokenizer.from_pretrained(args.model), seed=0)
    out = RESULTS / f"{args.name}-profiles"
    out.mkdir(parents=True, exist_ok=True)
    limits = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.limit)}
    server = servers.start_ours(args.model, args.port, out, num_threads=1, limits=limits)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    rows = []
    try:
        url = server.url + server.route
        pids = _replica_pids(server.proc.pid)
        for n in per_request:
            payloads, counts = serve_load._payloads(texts, n)
            asyncio.run(serve_load._load(url, payloads, counts, max(levels), 3, None))  # warm-up
            for concurrency in levels:
                row = {"texts_per_request": n, "concurrency": concurrency,
                       **_profiled_load(url, payloads, counts, concurrency, args.seconds, pids, out, spy,
                                         server.url)}
                rows.append({**row, **split(row)})
                print(json.dumps({k: row[k] for k in ("texts_per_request", "concurrency", "requests_per_s",
                                                      "requests_per_model_call", "cpu_ms_per_request")}
                                 | split(row)))
    finally:
        server.stop()
    result = {"benchmark": "cpu-split", "name": args.name, "model": args.model,
              "command": "python -m bench.profile_replicas " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
