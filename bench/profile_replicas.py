"""Where a served request's CPU goes: py-spy on the ingress and model replicas under one-text load.

    python -m bench.profile_replicas --model .models/tiny --name profile-one-text [--concurrency 64]

Starts this project's service as `bench.serve_load` does (`ours`: high-throughput mode, 1 model replica,
cache off), warms it, then for `--seconds` posts one-text `/v1/embeddings` requests at `--concurrency`
while py-spy samples both replicas. Reported: requests/s, each process's CPU ms per request (psutil;
py-spy's own cost included), each replica's samples by kind of work (`CATEGORIES`, the first match from
the innermost frame out) and its top functions. Writes bench/results/<name>.json (`bench.report` renders it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

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
    for proc in psutil.Process(root).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        for name, marker in PROCESSES.items():
            if marker in cmd:
                found[name] = proc.pid
        if cmd.split(" ")[0].endswith("haproxy"):
            found["haproxy"] = proc.pid
    return found


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> dict:
    """Profile, print the summary, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="profile-one-text")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--port", type=int, default=8411)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    texts = short_queries(512, AutoTokenizer.from_pretrained(args.model), seed=0)
    payloads, counts = serve_load._payloads(texts, 1)
    out = RESULTS / f"{args.name}-profiles"
    out.mkdir(parents=True, exist_ok=True)
    server = servers.start_ours(args.model, args.port, out, num_threads=1)
    try:
        url = server.url + server.route
        asyncio.run(serve_load._load(url, payloads, counts, args.concurrency, 3, None))  # warm-up
        pids = _replica_pids(server.proc.pid)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spies = [subprocess.Popen([spy, "record", "-p", str(pids[name]), "-d", str(int(args.seconds)), "-r", "50",
                                   "-f", "raw", "--nonblocking", "-o", str(out / f"{name}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for name in PROCESSES]
        before = {name: _cpu(pid) for name, pid in pids.items()}
        load = asyncio.run(serve_load._load(url, payloads, counts, args.concurrency, args.seconds, None))
        cpu = {name: round((_cpu(pid) - before[name]) * 1e3 / load["requests"], 3) for name, pid in pids.items()}
        for s in spies:
            s.wait(60)
    finally:
        server.stop()
    result = {"name": args.name, "model": args.model, "concurrency": args.concurrency,
              "command": "python -m bench.profile_replicas " + " ".join(argv or sys.argv[1:]),
              "requests_per_s": round(load["requests_per_s"], 1), "cpu_ms_per_request": cpu,
              "replicas": {name: {"kinds": categorize(out / f"{name}.txt"), **top_functions(out / f"{name}.txt", 8)}
                           for name in PROCESSES}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("requests_per_s", "cpu_ms_per_request")}))
    return result


if __name__ == "__main__":
    main()
