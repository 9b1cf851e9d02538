"""CLI: `python -m serve_app.offline --input PATH --output DIR [options]`; see `--help`."""

from __future__ import annotations

import argparse

from ..config import EncoderConfig
from .pipeline import OfflineJob, embed_corpus


def parse_args(argv: list[str] | None = None) -> OfflineJob:
    """Turn command-line flags into a validated `OfflineJob`."""
    p = argparse.ArgumentParser(prog="python -m serve_app.offline",
                                description="Embed a corpus (jsonl/parquet/csv) with BGE-M3 on Ray Data into parquet "
                                            "(and Milvus).")
    p.add_argument("--input", required=True, help="a file, a folder or a glob")
    p.add_argument("--output", required=True, help="output directory (data/, errors/, _manifest.json)")
    p.add_argument("--model", default=EncoderConfig().model, help="hub id or checkpoint directory")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default=None, help="default: <file>:<row number>")
    p.add_argument("--colbert", action="store_true", help="also write ColBERT vectors (large)")
    p.add_argument("--concurrency", type=int, default=1, help="encoder actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (0.25: four per GPU)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads per actor")
    p.add_argument("--batch-size", type=int, default=256, help="rows per map_batches call")
    p.add_argument("--max-length", type=int, default=8192)
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--overwrite", action="store_true", help="delete earlier output and start afresh")
    p.add_argument("--max-shards", type=int, default=None, help="stop after this many new input files")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--milvus-uri", default=None,
                   help="also upsert each shard into Milvus: a Milvus Lite file (*.db) or http://host:19530")
    p.add_argument("--milvus-collection", default="bge_m3", help="Milvus collection (created when missing)")
    a = p.parse_args(argv)
    encoder = EncoderConfig(model=a.model, device=a.device, dtype=a.dtype, max_length=a.max_length,
                            max_batch_tokens=a.max_batch_tokens, num_threads=a.num_threads)
    return OfflineJob(input=a.input, output=a.output, encoder=encoder, text_field=a.text_field, id_field=a.id_field,
                      colbert=a.colbert, concurrency=a.concurrency, num_gpus=a.num_gpus, num_cpus=a.num_cpus,
                      batch_size=a.batch_size, overwrite=a.overwrite, max_shards=a.max_shards, address=a.address,
                      milvus_uri=a.milvus_uri, milvus_collection=a.milvus_collection)


def main(argv: list[str] | None = None) -> None:
    """Run the job and print its summary."""
    summary = embed_corpus(parse_args(argv))
    print(f"done: {summary.line()}")


if __name__ == "__main__":
    main()
