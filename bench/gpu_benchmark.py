"""GPU benchmark for a single H100/H200 host: fp16, fractional replicas, token-budget sweep.

    python -m bench.gpu_benchmark [--model DIR]     # default: builds the full-size random checkpoint

For each replica fraction (1.0, 0.5, 0.25 of the GPU: 1, 2 or 4 replicas) and each token budget, it
serves the mixed workload over HTTP at concurrency 16/64/256 and measures the raw encoder alone; the
table is appended to docs/benchmarks.md. Needs no model hub (the checkpoint is built here).

A budget row sets both token budgets to it (docs/serving.md, "Two token budgets"): the encoder's padded tokens
per forward pass (`max_forward_tokens`) and the replica's real tokens per coalesced batch
(`user_config.max_queue_tokens`). The queue budget caps what one forward pass can be given, so raising
only the encoder's would measure the default queue budget's batches again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
from pathlib import Path

import numpy as np

from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.tools.tiny_model import FULL_SIZE, build_checkpoint

from . import servers
from .serve_load import RESULTS, _load, _payloads
from .workload import make_workload

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def server_settings(budget: int, fraction: float, device: str, dtype: str) -> dict:
    """`servers.start_ours` settings of one sweep point: both token budgets at `budget`, and `1 / fraction`
    replicas sharing the GPU."""
    return {"num_threads": None, "dtype": dtype, "device": device, "num_gpus": fraction if device == "cuda" else 0,
            "replicas": max(1, round(1 / fraction)), "max_forward_tokens": budget, "max_queue_tokens": budget}


def main(argv: list[str] | None = None) -> None:
    """Run the sweep and append its table to docs/benchmarks.md."""
    import torch
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--fractions", default="1.0,0.5,0.25")
    p.add_argument("--budgets", default="16384,32768,65536",
                   help="token budgets; each sets max_forward_tokens and max_queue_tokens (>= max_length, 8192)")
    p.add_argument("--levels", default="16,64,256")
    p.add_argument("--n-texts", type=int, default=2048)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    p.add_argument("--doc", default=str(DOC), help="markdown file the table is appended to")
    args = p.parse_args(argv)
    model = args.model or str(RESULTS / "full-size")
    if args.model is None and not (Path(model) / "config.json").exists():
        build_checkpoint(model, hidden=FULL_SIZE["hidden"], layers=FULL_SIZE["layers"], heads=FULL_SIZE["heads"],
                         intermediate=FULL_SIZE["intermediate"], vocab_size=FULL_SIZE["vocab_size"])
    texts = make_workload(args.n_texts, AutoTokenizer.from_pretrained(model), seed=0)
    dtype = "fp16" if args.device == "cuda" else "auto"
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    lines = [f"\n### GPU run {datetime.date.today()} on {device_name}\n",
             f"`python -m bench.gpu_benchmark {' '.join(argv or __import__('sys').argv[1:])}`; {len(texts)} mixed "
             "texts, 1 text per request, fp16.\n",
             "| GPU share per replica | replicas | token budgets, forward / queue | raw texts/s | concurrency "
             "| served texts/s | "
             "served/raw | p50 ms | p95 ms | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    log_dir = RESULTS / "gpu-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for budget in [int(b) for b in args.budgets.split(",")]:
        encoder = Encoder(EncoderConfig(model=model, device=args.device, dtype=dtype, max_forward_tokens=budget))
        encoder.encode(texts[:64])
        t0 = time.perf_counter()
        encoder.encode(texts, sparse=False)
        raw = len(texts) / (time.perf_counter() - t0)
        del encoder
        if args.device == "cuda":
            torch.cuda.empty_cache()
        for fraction in [float(f) for f in args.fractions.split(",")]:
            settings = server_settings(budget, fraction, args.device, dtype)
            replicas = settings["replicas"]
            server = servers.start_ours(model, 8300, log_dir, **settings)
            budgets = "{max_forward_tokens} / {max_queue_tokens}".format(**server.notes["budgets"])  # as served
            try:
                payloads, counts = _payloads(texts, 1)
                asyncio.run(_load(server.url + server.route, payloads, counts, 16, 3.0, None))
                for c in [int(x) for x in args.levels.split(",")]:
                    r = asyncio.run(_load(server.url + server.route, payloads, counts, c, args.duration, None))
                    lines.append(f"| {fraction} | {replicas} | {budgets} | {raw:.0f} | {c} | {r['texts_per_s']:.0f} | "
                                 f"{r['texts_per_s'] / raw:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                                 f"{r['errors']} |")
                    print(lines[-1], flush=True)
            finally:
                server.stop()
    with open(args.doc, "a") as doc:
        doc.write("\n".join(lines) + "\n")
    print(f"appended to {args.doc}; mean served/raw "
          f"{np.mean([float(line.split('|')[7]) for line in lines[4:]]):.2f}")


if __name__ == "__main__":
    main()
