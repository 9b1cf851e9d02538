"""Backfill beside live traffic: does a bulk backfill through the live model replica leave queries fast,
run about as fast as a dedicated offline pool, and keep the device busy?

    python -m bench.backfill --name backfill-small [--full-size] [--rows 20000] [--duration 30] [--callers 8]
        [--threads 2] [--phases online,backfill,both,fifo,dedicated]

One model replica (the small checkpoint, or `--full-size`: the real architecture with random weights, from
`python -m serve_app.tools.tiny_model DIR --full-size`; or `--model DIR`), served by `serve run` of
serve_config.yaml (`servers.ours_config`: cache off, `--threads` torch threads) in a Ray of its own, on this
machine's CPUs. Online load: `--callers` closed-loop callers, each sending one short query at a time to
`/v1/embeddings`, every query distinct (in words: the small tokenizer maps digits to <unk>). The backfill:
`python -m serve_app.offline --serve-app bge-m3 --address ADDR` over a generated corpus
(`workload.offline_corpus`, `--rows` rows), which sends `priority: "bulk"` requests through the deployment
handle. Phases, in order:

1. `online`: the online load alone for `--duration` s: p50/p95.
2. `backfill`: the backfill alone: its rows/s (the job's own `done:` line).
3. `both`: the backfill started, and once the device is working on it, the online load for `--duration` s.
4. `fifo`: phase 3 again on a service restarted with the model's `user_config.scheduling: fifo` (one queue in
   arrival order, whatever the priority): the control.
5. `dedicated`: the service stopped, `python -m serve_app.offline` without `--serve-app` (one actor, the same
   CPUs and threads as the replica) over the same corpus: its rows/s.

The device busy share of a phase is the growth of the model replica's `/info` `compute.busy_s` (seconds its
compute thread spent in encoder calls) over the phase's wall time, read at its start and end. Targets: online
p95 with the backfill <= 1.25x alone; the backfill alone >= 0.9x the dedicated pool; device busy >= 90% when
both run. Writes bench/results/<name>.json and <name>.md (the table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import httpx
import psutil

from serve_app.tools.tiny_model import _EN_WORDS

from . import servers
from .offline_throughput import machine, run_measured, write_corpus
from .report import BACKFILL_PHASES as PHASES
from .report import backfill_ratios, backfill_table
from .serve_load import _load
from .workload import offline_corpus

RESULTS = Path(__file__).resolve().parent / "results"
APP = "bge-m3"  # serve_config.yaml's application
JOIN_ENV = {"RAY_AUTH_MODE": "token"}  # `serve run`'s Ray takes drivers with its token only (docs/cluster.md)


def distinct_queries(n: int, seed: int = 0, words: tuple[int, int] = (4, 7)) -> list[str]:
    """`n` distinct short queries of `words` English words each (no digits: the small tokenizer maps them to
    <unk>, so queries differing only in digits would be one text to the model)."""
    rng, seen = random.Random(seed), set()
    out: list[str] = []
    while len(out) < n:
        query = " ".join(rng.choices(_EN_WORDS, k=rng.randint(*words)))
        if query not in seen:
            seen.add(query)
            out.append(query)
    return out


def gcs_address(cmdlines: list[list[str]], port: int) -> str | None:
    """`ip:port` of the GCS server among these process command lines (a Ray head's `gcs_server`), started on
    `port` (`RAY_GCS_SERVER_PORT`; its command line may say 0): a driver joins with the node's own IP."""
    for cmd in cmdlines:
        if cmd and cmd[0].endswith("gcs_server"):
            ip = next((arg.split("=", 1)[1] for arg in cmd if arg.startswith("--node-ip-address=")), None)
            return f"{ip}:{port}" if ip else None
    return None


def busy_share(before: dict, after: dict, wall_s: float) -> float:
    """The share of `wall_s` the device spent computing, from two `/info` answers of the one model replica."""
    return (after["compute"]["busy_s"] - before["compute"]["busy_s"]) / wall_s if wall_s > 0 else 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _info(url: str) -> dict:
    return httpx.get(f"{url}/info", timeout=30).json()


def _job(cmd: list[str], env: dict | None = None) -> dict:
    """Run the offline job (with `env` added); its own figures from its `done:` line."""
    measured = run_measured(cmd, env=env)
    done = next(line for line in measured["stdout"].splitlines() if line.startswith("done: "))
    fields = dict(re.findall(r"(\S+)=(\S+)", done))
    return {"rows": int(fields["rows"]), "errors": int(fields["errors"]), "rows_per_s": float(fields["rows/s"]),
            "wall_s": measured["wall_s"], "done_line": done}


async def _online(url: str, queries: list[str], callers: int, duration: float) -> dict:
    payloads = [json.dumps({"input": q, "model": APP}).encode() for q in queries]
    return await _load(f"{url}/v1/embeddings", payloads, [1] * len(payloads), callers, duration, len(payloads))


async def _measured(url: str, work: Awaitable[dict]) -> dict:
    """`work`'s result (a coroutine, not started yet) with the device busy share over its wall time."""
    before, t0 = _info(url), time.monotonic()
    out = await work
    return {**out, "busy": busy_share(before, _info(url), time.monotonic() - t0)}


async def _to_thread(fn, *args) -> dict:
    return {"job": await asyncio.to_thread(fn, *args)}


async def _wait_busy(url: str, timeout: float = 120.0) -> None:
    """Until the device computes most of a second (the backfill is flowing), or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _info(url)
        await asyncio.sleep(1.0)
        if busy_share(before, _info(url), 1.0) > 0.5:
            return
    raise TimeoutError("the backfill did not reach the device")


async def _with_backfill(url: str, job_cmd: list[str], queries: list[str], args: argparse.Namespace) -> dict:
    """The online load while the backfill runs (started first, measured once it reaches the device)."""
    job = asyncio.create_task(asyncio.to_thread(_job, job_cmd, JOIN_ENV))
    await _wait_busy(url)
    measured = await _measured(url, _online(url, queries, args.callers, args.duration))
    ended_early = job.done()  # the window is then partly without backfill: make the corpus larger
    return {"online": {k: v for k, v in measured.items() if k != "busy"}, "busy": measured["busy"],
            "job": await job, "backfill_ended_early": ended_early}


def _service(model: str, port: int, log_dir: Path, threads: int, scheduling: str | None,
             bulk_tokens: int | None) -> servers.Server:
    config = servers.ours_config(model, port, num_threads=threads, cache=False)
    user_config = config["applications"][0]["deployments"][0]["user_config"]
    if scheduling is not None:
        user_config["scheduling"] = scheduling
    if bulk_tokens is not None:
        user_config["bulk_max_queue_tokens"] = bulk_tokens
    # A known GCS port, so the backfill job can join this service's Ray (never another one on the machine).
    gcs_port = _free_port()
    server = servers.serve_run(f"backfill-{scheduling or 'default'}", config, port, log_dir,
                               env={"RAY_GCS_SERVER_PORT": str(gcs_port)})
    tree = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    server.notes["address"] = gcs_address([p.cmdline() for p in tree], gcs_port)
    ray = str(Path(sys.executable).parent / "ray")
    status = subprocess.run([ray, "status", "--address", str(server.notes["address"])], capture_output=True,
                            text=True, env={**os.environ, **JOIN_ENV})
    if server.notes["address"] is None or status.returncode:
        server.stop()
        raise RuntimeError(f"cannot join the service's Ray at {server.notes['address']}: {status.stderr[-2000:]}")
    return server


def _on_service(url: str, names: list[str], backfill: list[str], outputs: Iterator[Path],
                slices: Iterator[list[str]], args: argparse.Namespace) -> dict:
    """The phases `names` on one running service; `backfill` is the job's command but for its output."""
    phases: dict[str, dict] = {}
    if "online" in names:
        alone = asyncio.run(_measured(url, _online(url, next(slices), args.callers, args.duration)))
        phases["online"] = {"busy": alone.pop("busy"), "online": alone}
    if "backfill" in names:
        alone = [*backfill, "--output", str(next(outputs))]
        phases["backfill"] = asyncio.run(_measured(url, _to_thread(_job, alone, JOIN_ENV)))
    for name in (n for n in ("both", "fifo") if n in names):
        phases[name] = asyncio.run(_with_backfill(url, [*backfill, "--output", str(next(outputs))], next(slices),
                                                  args))
    return phases


def run(args: argparse.Namespace, tmp: Path) -> dict:
    """Every phase asked for, in order; the result."""
    model = args.model or str(tmp / "model")
    if not args.model:
        subprocess.run([sys.executable, "-m", "serve_app.tools.tiny_model", model,
                        *(["--full-size"] if args.full_size else [])], check=True)
    corpus = write_corpus(offline_corpus(args.rows), tmp / "corpus", parquet=False)["jsonl"]
    queries = distinct_queries(args.pool)
    slices = iter(queries[i:i + args.pool // 3] for i in range(0, args.pool, args.pool // 3))  # none sent twice
    base = [sys.executable, "-m", "serve_app.offline", "--input", str(corpus), "--text-field", "text",
            "--id-field", "id"]
    outputs = (tmp / f"out{i}" for i in range(len(PHASES)))  # a fresh output folder per run: nothing skipped
    phases: dict[str, dict] = {}
    wanted = args.phases.split(",")
    for scheduling, names in ((None, ("online", "backfill", "both")), ("fifo", ("fifo",))):
        if not set(names) & set(wanted):
            continue
        server = _service(model, _free_port(), tmp, args.threads, scheduling, args.bulk_max_queue_tokens)
        try:
            backfill = [*base, "--serve-app", APP, "--address", server.notes["address"]]
            phases.update(_on_service(server.url, [n for n in names if n in wanted], backfill, outputs, slices, args))
        finally:
            server.stop()
    if "dedicated" in wanted:
        phases["dedicated"] = {"job": _job([*base, "--output", str(next(outputs)), "--model", model,
                                            "--concurrency", "1", "--num-cpus", "1",
                                            "--num-threads", str(args.threads)])}
    model_name = "full-size (random weights)" if args.full_size else args.model or "small"
    return {"benchmark": "backfill", "name": args.name, "model": model_name,
            "machine": machine(), "rows": args.rows, "callers": args.callers, "duration_s": args.duration,
            "threads": args.threads, "bulk_max_queue_tokens": args.bulk_max_queue_tokens,
            "phases": phases, "ratios": backfill_ratios(phases),
            "command": "python -m bench.backfill " + " ".join(sys.argv[1:])}


def main(argv: list[str] | None = None) -> dict:
    """Run the phases; write bench/results/<name>.json and .md; print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="backfill-small")
    p.add_argument("--model", help="a checkpoint directory (default: the small checkpoint, built here)")
    p.add_argument("--full-size", action="store_true", help="build the real architecture with random weights")
    p.add_argument("--rows", type=int, default=20_000, help="corpus rows (the backfill must outlast --duration)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of online load per phase")
    p.add_argument("--callers", type=int, default=8, help="closed-loop online callers")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the replica and of the dedicated actor")
    p.add_argument("--pool", type=int, default=60_000, help="distinct queries generated (a third per online phase)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"a subset of {','.join(PHASES)}")
    p.add_argument("--bulk-max-queue-tokens", type=int, help="the model's user_config.bulk_max_queue_tokens "
                   "(default: the shipped one; on a CPU with the full-size model pick ~0.1 s of its work)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    text = f"{result['command']}\n\n{result['machine']}, model {result['model']}\n\n{backfill_table(result)}\n"
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
