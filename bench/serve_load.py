"""HTTP load benchmark: served vs. raw model vs. naive server vs. a peer, side by side in one run.

    python -m bench.serve_load --model .models/tiny --name small \\
        [--targets raw,ours,naive,infinity] [--levels 1,4,16,64,256] [--texts-per-request 1,32]

For each target and concurrency level, async clients (aiohttp) post OpenAI-style `/v1/embeddings`
requests for `--duration` seconds; reported: texts/s, tokens/s, p50/p95/p99 latency, errors, and the
server's CPU ms per request. `raw` is the encoder called directly in this process on the whole workload.
Writes bench/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import numpy as np

from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder

from . import servers
from .workload import MIX, SHORT_MIX, make_workload, short_queries

RESULTS = Path(__file__).resolve().parent / "results"


async def drive(call: Callable[[int], Awaitable[bool]], n_requests: int, concurrency: int, duration: float,
                max_requests: int | None = None) -> dict:
    """`concurrency` workers calling `call(i)` for request `i` (cycling over `n_requests`) until `duration`
    seconds pass or `max_requests` were sent; `call` returns whether the answer was a success. Returns the
    answered requests' indices and latencies, the failures and the seconds taken."""
    latencies: list[float] = []
    answered: list[int] = []
    errors, cursor = 0, 0
    stop_at = time.monotonic() + duration

    async def worker() -> None:
        nonlocal errors, cursor
        while time.monotonic() < stop_at and (max_requests is None or cursor < max_requests):
            i = cursor % n_requests
            cursor += 1
            start = time.perf_counter()
            try:
                ok = await call(i)
            except (aiohttp.ClientError, grpc.RpcError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
                answered.append(i)
            else:
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "answered": answered, "errors": errors, "seconds": time.monotonic() - started}


def summary(run: dict) -> dict:
    """A `drive` run's requests, errors, requests/s and latency percentiles (ms)."""
    lat = np.array(run["latencies"] or [0.0]) * 1e3
    return {"requests": len(run["latencies"]), "errors": run["errors"], "seconds": run["seconds"],
            "requests_per_s": len(run["latencies"]) / run["seconds"], "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99))}


async def _load(url: str, payloads: list[bytes], n_texts: list[int], concurrency: int, duration: float,
                max_requests: int | None) -> dict:
    """Posts `payloads` (JSON bodies of `n_texts` texts each) to `url`: `summary` plus texts and texts/s."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def call(i: int) -> bool:
            async with session.post(url, data=payloads[i], headers={"content-type": "application/json"}) as r:
                await r.read()
                return r.status == 200

        run = await drive(call, len(payloads), concurrency, duration, max_requests)
    texts = sum(n_texts[i] for i in run["answered"])
    return {**summary(run), "texts": texts, "texts_per_s": texts / run["seconds"]}


def _payloads(texts: list[str], per_request: int) -> tuple[list[bytes], list[int]]:
    groups = [texts[i: i + per_request] for i in range(0, len(texts) - per_request + 1, per_request)]
    return [json.dumps({"input": g, "model": "bge-m3"}).encode() for g in groups], [len(g) for g in groups]


def measure_raw(model: str, texts: list[str], num_threads: int, dtype: str = "auto", repeats: int = 3) -> dict:
    """The ceiling: the encoder core on the whole workload in this process (dense only, best of N)."""
    encoder = Encoder(EncoderConfig(model=model, num_threads=num_threads, dtype=dtype))
    encoder.encode(texts[:64], sparse=False)
    best, cpu = float("inf"), 0.0
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = encoder.encode(texts, sparse=False)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = min(best, elapsed)
    single = []
    for text in texts[:50]:
        t0 = time.perf_counter()
        encoder.encode([text], sparse=False)
        single.append((time.perf_counter() - t0) * 1e3)
    tokens = sum(e.n_tokens for e in out)
    return {"texts_per_s": len(texts) / best, "tokens_per_s": tokens / best, "cpu_ms_per_text": cpu * 1e3 / len(texts),
            "single_text_p50_ms": float(np.median(single)), "dtype": encoder.describe()["dtype"]}


def run_target(server: servers.Server, texts: list[str], tokens_per_text: float, levels: list[int],
               per_request: list[int], duration: float, max_requests: int | None) -> list[dict]:
    """Warm up, then sweep concurrency for each texts-per-request mode."""
    rows = []
    url = server.url + server.route
    for k in per_request:
        payloads, counts = _payloads(texts, k)
        asyncio.run(_load(url, payloads, counts, 4, 2.0, 40))  # warm-up
        for c in levels:
            cpu0 = server.cpu_seconds()
            row = asyncio.run(_load(url, payloads, counts, c, duration, max_requests))
            cpu = server.cpu_seconds() - cpu0
            row.update({"target": server.name, "concurrency": c, "texts_per_request": k,
                        "tokens_per_s": row["texts_per_s"] * tokens_per_text,
                        "server_cpu_ms_per_request": cpu * 1e3 / max(row["requests"], 1)})
            print(f"  {server.name:>18} k={k:<3} c={c:<4} {row['texts_per_s']:9.1f} texts/s  "
                  f"p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  errors {row['errors']}", flush=True)
            rows.append(row)
    return rows


def plot(rows: list[dict], raw: dict | None, path: Path, title: str) -> None:
    """Throughput and p95 latency vs. concurrency, one line per target and texts-per-request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted({(r["target"], r["texts_per_request"]) for r in rows}):
        sel = [r for r in rows if (r["target"], r["texts_per_request"]) == key]
        label = f"{key[0]} ({key[1]} text/req)"
        a.plot([r["concurrency"] for r in sel], [r["texts_per_s"] for r in sel], marker="o", label=label)
        b.plot([r["concurrency"] for r in sel], [r["p95_ms"] for r in sel], marker="o", label=label)
    if raw:
        a.axhline(raw["texts_per_s"], color="k", linestyle="--", label="raw encoder (ceiling)")
    for ax, ylabel in ((a, "texts/s"), (b, "p95 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    b.set_yscale("log")
    a.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON and plot."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="small")
    p.add_argument("--targets", default="raw,ours,naive,infinity")
    p.add_argument("--levels", default="1,4,16,64,256")
    p.add_argument("--texts-per-request", default="1,32")
    p.add_argument("--n-texts", type=int, default=512)
    p.add_argument("--workload", choices=["queries", "mixed", "short-mixed"], default="queries")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per level")
    p.add_argument("--max-requests", type=int, default=None, help="cap per level (full-size model)")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads of our replica (1: the 2-core box "
                   "also runs the proxy, ingress and client)")
    p.add_argument("--raw-threads", type=int, default=2, help="torch threads of the raw baseline (whole box)")
    p.add_argument("--dtype", default="auto", help="ours and naive: auto|fp32|bf16; infinity gets the same")
    p.add_argument("--infinity-bin", default="/work/infinity-venv/bin/infinity_emb")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--start-timeout", type=float, default=300, help="seconds a server may take to get healthy")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.workload == "queries":
        texts = short_queries(args.n_texts, tokenizer, seed=0)
    else:
        texts = make_workload(args.n_texts, tokenizer, seed=0, mix=SHORT_MIX if args.workload == "short-mixed" else MIX)
    tokens_per_text = float(np.mean([len(tokenizer(t)["input_ids"]) for t in texts]))
    targets = args.targets.split(",")
    levels = [int(x) for x in args.levels.split(",")]
    per_request = [int(x) for x in args.texts_per_request.split(",")]
    RESULTS.mkdir(exist_ok=True)
    log_dir = RESULTS / f"{args.name}-logs"
    log_dir.mkdir(exist_ok=True)
    result = {"name": args.name, "model": args.model, "workload": args.workload, "n_texts": len(texts),
              "tokens_per_text": tokens_per_text, "machine": f"{platform.processor() or platform.machine()}, "
              f"{__import__('os').cpu_count()} cores", "levels": levels, "rows": [], "raw": None,
              "command": "python -m bench.serve_load " + " ".join(argv or __import__("sys").argv[1:])}
    if "raw" in targets:
        result["raw"] = measure_raw(args.model, texts, args.raw_threads, args.dtype)
        print(f"  raw: {result['raw']}", flush=True)
    starters = {
        "ours": lambda port: servers.start_ours(args.model, port, log_dir, num_threads=args.num_threads,
                                                dtype=args.dtype, throughput_optimized=True),
        "ours-cache": lambda port: servers.start_ours(args.model, port, log_dir, num_threads=args.num_threads,
                                                      dtype=args.dtype, throughput_optimized=True, cache=True),
        "ours-default-threads": lambda port: servers.start_ours(args.model, port, log_dir, num_threads=None,
                                                                dtype=args.dtype, throughput_optimized=True),
        "ours-plain-serve": lambda port: servers.start_ours(args.model, port, log_dir, num_threads=args.num_threads,
                                                            dtype=args.dtype, throughput_optimized=False,
                                                            batch_wait_timeout_s=0.005),
        "naive": lambda port: servers.start_naive(args.model, port, log_dir, dtype=args.dtype),
        "infinity": lambda port: servers.start_infinity(
            args.model, port, log_dir, args.infinity_bin, args.start_timeout,
            {"auto": "auto", "fp32": "float32", "bf16": "bfloat16"}[args.dtype]),
    }
    result["failed"] = {}
    for i, target in enumerate(t for t in targets if t != "raw"):
        try:
            server = starters[target](args.port + i)
        except (RuntimeError, TimeoutError) as exc:  # a peer that can't run here is reported, not fatal
            result["failed"][target] = str(exc)[-500:]
            print(f"  {target} did not start: {exc}", flush=True)
            continue
        try:
            result["rows"] += run_target(server, texts, tokens_per_text, levels, per_request, args.duration,
                                         args.max_requests)
        finally:
            server.stop()
        (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))  # keep what is measured
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    if result["rows"]:
        plot(result["rows"], result["raw"], RESULTS / f"{args.name}.png", f"{args.name}: {args.model}")
    return result


if __name__ == "__main__":
    main()
