"""What sending token ids instead of texts saves: one input per request at a fixed concurrency, texts and
their ids alternating on one running service.

    python -m bench.token_ids --model .models/tiny --name token-ids [--concurrency 64] [--rounds 3]

Starts this project's service as `bench.serve_load` does (`ours`: high-throughput mode, 1 model replica,
cache off), tokenizes the workload's distinct short queries with the checkpoint's tokenizer (the ids
`/tokenize` returns: special tokens included), then for each round posts `/v1/embeddings` with one text
per request for `--seconds`, then the same inputs as one list of ids per request. Reported per kind of
input, median over the rounds: requests/s, p50/p95 latency and each process's CPU ms per request
(psutil: ingress, model replica, proxy). Alternating on one server, rather than two runs, keeps the
machine's drift (±15% here) out of the ratio. Writes bench/results/<name>.json (`bench.report` renders it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

from . import serve_load, servers
from .profile_replicas import _replica_pids
from .workload import short_queries

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("text", "ids")


def payloads(texts: list[str], tokenizer) -> dict[str, list[bytes]]:
    """One `/v1/embeddings` body per input: the text, or its token ids as one input (`[[ids]]`)."""
    ids = tokenizer(texts)["input_ids"]
    return {"text": [json.dumps({"input": [t], "model": "bge-m3"}).encode() for t in texts],
            "ids": [json.dumps({"input": [i], "model": "bge-m3"}).encode() for i in ids]}


def _phase(url: str, bodies: list[bytes], pids: dict[str, int], concurrency: int, seconds: float) -> dict:
    before = {name: servers.process_cpu_s(pid) for name, pid in pids.items()}
    load = asyncio.run(serve_load._load(url, bodies, [1] * len(bodies), concurrency, seconds, None))
    cpu = {name: (servers.process_cpu_s(pid) - before[name]) * 1e3 / max(load["requests"], 1)
           for name, pid in pids.items()}
    return {"requests_per_s": load["requests_per_s"], "p50_ms": load["p50_ms"], "p95_ms": load["p95_ms"],
            "errors": load["errors"], "cpu_ms_per_request": cpu}


def summarize(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per kind of input, the median over rounds of each figure."""
    out = {}
    for kind in KINDS:
        phases = [r[kind] for r in rounds]
        out[kind] = {key: statistics.median(p[key] for p in phases)
                     for key in ("requests_per_s", "p50_ms", "p95_ms", "errors")}
        out[kind]["cpu_ms_per_request"] = {name: statistics.median(p["cpu_ms_per_request"][name] for p in phases)
                                           for name in phases[0]["cpu_ms_per_request"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, print the summary, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="token-ids")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0, help="per phase")
    p.add_argument("--rounds", type=int, default=3, help="text then ids, this many times")
    p.add_argument("--n-texts", type=int, default=512)
    p.add_argument("--port", type=int, default=8412)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    bodies = payloads(short_queries(args.n_texts, tokenizer, seed=0), tokenizer)
    log_dir = RESULTS / f"{args.name}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = servers.start_ours(args.model, args.port, log_dir, num_threads=1)
    rounds = []
    try:
        url = server.url + server.route
        for kind in KINDS:  # warm-up: both paths compiled and the batch sizes seen
            asyncio.run(serve_load._load(url, bodies[kind], [1] * len(bodies[kind]), args.concurrency, 3, None))
        pids = _replica_pids(server.proc.pid)
        for i in range(args.rounds):
            rounds.append({kind: _phase(url, bodies[kind], pids, args.concurrency, args.seconds) for kind in KINDS})
            print(f"  round {i + 1}: " + "  ".join(f"{k} {rounds[-1][k]['requests_per_s']:.0f} req/s" for k in KINDS),
                  flush=True)
    finally:
        server.stop()
    result = {"benchmark": "token-ids", "name": args.name, "model": args.model, "concurrency": args.concurrency,
              "seconds": args.seconds,
              "command": "python -m bench.token_ids " + " ".join(argv or sys.argv[1:]),
              "rounds": rounds, "median": summarize(rounds)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median"], indent=1))
    return result


if __name__ == "__main__":
    main()
