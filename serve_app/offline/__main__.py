"""CLI: `python -m serve_app.offline --input PATH --output DIR [options]`; see `--help`.

Every option is a field of `OfflineJob` or `EncoderConfig`; a flag not given keeps the field's default,
which is written only there (`--help` shows it).
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from ..core.cache import CacheConfig
from ..core.cli import config_flag, given
from ..core.config import EncoderConfig, Instructions
from .job import OfflineJob
from .pipeline import embed_corpus
from .progress import Printer

# Flag -> (type or "switch", help); help None: the field's own description.
JOB_FLAGS = {
    "text_field": (str, "the field holding the text"),
    "ids_field": (str, None),
    "id_field": (str, "the field holding the row id (without it: <file>:<row number>)"),
    "input_type": (str, None),
    "colbert": ("switch", "also write ColBERT vectors (large)"),
    "concurrency": (int, None),
    "num_gpus": (float, "GPUs per actor (0.25: four per GPU)"),
    "num_cpus": (float, None),
    "batch_bytes": (int, None),
    "batch_size": (int, None),
    "overwrite": ("switch", "delete earlier output and start afresh"),
    "max_shards": (int, "stop after this many new input files (without it: all)"),
    "address": (str, None),
    "milvus_uri": (str, None),
    "milvus_collection": (str, None),
    "serve_app": (str, None),
    "bulk_timeout_s": (float, None),
    "in_flight_per_replica": (int, None),
}
ENCODER_FLAGS = {
    "model": (str, None),
    "device": (str, None),
    "dtype": (str, None),
    "max_length": (int, None),
    "max_forward_tokens": (int, None),
    "num_threads": (int, "torch threads per actor (without it: Ray's, 1 per CPU of --num-cpus)"),
}
INSTRUCTION_FLAGS = {"query_instruction": "query", "passage_instruction": "passage"}  # -> encoder.instructions
RENAMED_FLAGS = {"--max-batch-tokens": "--max-forward-tokens (padded tokens per forward pass)"}


def _add(parser: argparse.ArgumentParser, model: type, flags: dict) -> None:
    for field, (kind, help_text) in flags.items():
        options = {"action": "store_true"} if kind == "switch" else {"type": kind}
        config_flag(parser, model, field, help=help_text, **options)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: every flag, its help, and its default (None: the config field's)."""
    p = argparse.ArgumentParser(prog="python -m serve_app.offline",
                                description="Embed a corpus (jsonl/parquet/csv) with BGE-M3 on Ray Data into parquet "
                                            "(and Milvus).")
    p.add_argument("--input", required=True, help="a file, a folder or a glob")
    p.add_argument("--output", required=True, help="output directory (data/, errors/, _manifest.json)")
    p.add_argument("--cache-redis-url", help="reuse and fill the embedding cache in this Redis (e.g. the online "
                                             "service's); without it: no cache")
    _add(p, OfflineJob, JOB_FLAGS)
    _add(p, EncoderConfig, ENCODER_FLAGS)
    for flag, side in INSTRUCTION_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None,
                       help=f"encoder.instructions.{side}: text put before each text with --input-type {side}")
    for old in RENAMED_FLAGS:
        p.add_argument(old, dest=old, default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> OfflineJob:
    """Turn command-line flags into a validated `OfflineJob`."""
    p = build_parser()
    a = p.parse_args(argv)
    for old, new in RENAMED_FLAGS.items():
        if getattr(a, old) is not None:
            p.error(f"{old} was renamed {new}")
    instructions = Instructions(**{side: getattr(a, flag) for flag, side in INSTRUCTION_FLAGS.items()})
    try:
        encoder = EncoderConfig(**given(a, ENCODER_FLAGS), instructions=instructions)
        # Only when asked: OfflineJob's default (no cache) is written there alone.
        cache = {"cache": CacheConfig(backend="redis", redis_url=a.cache_redis_url)} if a.cache_redis_url else {}
        return OfflineJob(input=a.input, output=a.output, encoder=encoder, **cache, **given(a, JOB_FLAGS))
    except ValidationError as exc:  # the rule's own words (e.g. what --serve-app refuses), as a usage error
        p.error("; ".join(_reason(error) for error in exc.errors()))


def _reason(error) -> str:
    """One validation error as a line: the field at fault (none for a rule over several), then why."""
    where, why = ".".join(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
    return f"{where}: {why}" if where else why


def main(argv: list[str] | None = None) -> None:
    """Run the job, printing progress lines (stderr) while it runs and its summary at the end."""
    summary = embed_corpus(parse_args(argv), on_progress=Printer())
    print(f"done: {summary.line()}")


if __name__ == "__main__":
    main()
