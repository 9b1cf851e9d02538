"""Offline throughput: the Ray Data job vs. the raw encoder over the same corpus, on the same cores.

    python -m bench.offline_throughput --model .models/tiny --n-texts 4000 [--num-threads 2]

Both compute dense + sparse, as the job does. Raw is timed without model loading; the job's wall time
includes everything a user waits for (actor start, model load, reading, writing parquet).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.offline import OfflineJob, embed_corpus

from .workload import make_workload

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    """Run both and write bench/results/offline-<name>.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="small")
    p.add_argument("--n-texts", type=int, default=4000)
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    texts = make_workload(args.n_texts, AutoTokenizer.from_pretrained(args.model), seed=1)
    config = EncoderConfig(model=args.model, num_threads=args.num_threads)
    load0 = time.perf_counter()
    encoder = Encoder(config)
    load_s = time.perf_counter() - load0
    t0 = time.perf_counter()
    out = encoder.encode(texts, dense=True, sparse=True)
    raw_s = time.perf_counter() - t0
    tokens = sum(e.n_tokens for e in out)
    del encoder
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        summary = embed_corpus(OfflineJob(input=str(corpus), output=str(Path(tmp) / "out"), encoder=config,
                                          num_cpus=2, batch_size=args.batch_size))
        job_s = time.perf_counter() - t0
        ray.shutdown()
    result = {"name": args.name, "model": args.model, "texts": len(texts), "tokens": tokens,
              "raw_s": raw_s, "raw_with_load_s": raw_s + load_s, "job_s": job_s,
              "raw_texts_per_s": len(texts) / raw_s, "job_texts_per_s": summary.rows / job_s,
              "ratio_job_vs_raw": raw_s / job_s, "ratio_job_vs_raw_with_load": (raw_s + load_s) / job_s,
              "command": "python -m bench.offline_throughput " + " ".join(argv or __import__("sys").argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"offline-{args.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
