"""Find the input files and read them with Ray Data's readers into rows of `id`, `text`, `error`.

A row whose text is missing, null or not a string keeps its place with an `error` reason instead of
being dropped; without an id field, the id is `<file>:<row number>` (stable across runs).
"""

from __future__ import annotations

import glob
import json
from itertools import accumulate
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".csv": "csv"}
ROW_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("error", pa.string())])


def find_inputs(path: str) -> list[Path]:
    """A file, every supported file under a folder, or a glob; sorted, so shard order is stable."""
    candidates = [Path(p) for p in glob.glob(path, recursive=True)] if glob.has_magic(path) else [Path(path)]
    files: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir():
            files += [p for p in candidate.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS]
        elif candidate.is_file():
            if candidate.suffix.lower() not in FORMATS:
                raise ValueError(f"{candidate}: unsupported input format (use {', '.join(sorted(FORMATS))})")
            files.append(candidate)
    if not files:
        raise FileNotFoundError(f"no jsonl, parquet or csv input found at {path!r}")
    return sorted(set(files))


def _describe(value) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a JSON "\\ud800" escape: Arrow (and the tokenizer) need valid Unicode
            return "text contains an unpaired UTF-16 surrogate (not valid Unicode)"
        return None
    return "null text" if value is None else f"text is a {type(value).__name__}, not a string"


def _parse_jsonl(batch: pa.Table, text_field: str, id_field: str | None) -> pa.Table:
    ids, texts, errors = [], [], []
    for line in batch.column("text").to_pylist():
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            obj, error = {}, "line is not a JSON object"
        else:
            error = f"missing field {text_field!r}" if text_field not in obj else _describe(obj[text_field])
        key, text = (obj.get(id_field) if id_field else None), obj.get(text_field)
        if id_field and key is None and obj:
            error = f"missing id field {id_field!r}"
        ids.append(None if key is None else str(key).encode("utf-8", "backslashreplace").decode())
        texts.append(text if error is None else None)
        errors.append(error)
    return pa.table([ids, texts, errors], schema=ROW_SCHEMA)


def _normalize_table(batch: pa.Table, text_field: str, id_field: str | None) -> pa.Table:
    n = batch.num_rows
    if id_field and id_field in batch.column_names:
        ids = pc.cast(batch.column(id_field), pa.string())
    else:
        ids = pa.nulls(n, pa.string())
    if text_field not in batch.column_names:
        return pa.table([ids, pa.nulls(n, pa.string()), pa.array([f"missing field {text_field!r}"] * n)],
                        schema=ROW_SCHEMA)
    column = batch.column(text_field)
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        texts, errors = pa.nulls(n, pa.string()), pa.array([_describe(v) for v in column.to_pylist()], pa.string())
    else:
        texts = pc.cast(column, pa.string())
        errors = pc.if_else(pc.is_null(texts), pa.scalar("null text"), pa.scalar(None, pa.string()))
    if id_field:
        errors = pc.if_else(pc.is_null(ids), pa.scalar(f"missing id field {id_field!r}"), errors)
    return pa.table([ids, texts, errors], schema=ROW_SCHEMA)


def read_rows(path: Path, text_field: str, id_field: str | None) -> ray.data.Dataset:
    """One input file as a dataset of `id` (null when there is no id field), `text`, `error`."""
    kind = FORMATS[path.suffix.lower()]
    kwargs = {"fn_kwargs": {"text_field": text_field, "id_field": id_field}, "batch_format": "pyarrow"}
    if kind == "json":
        # Read lines and parse them here: pyarrow's JSON reader fails a whole file on a mixed-type field.
        return ray.data.read_text(str(path), drop_empty_lines=True).map_batches(_parse_jsonl, **kwargs)
    if kind == "csv":
        from pyarrow import csv

        types = {f: pa.string() for f in (text_field, id_field) if f}
        ds = ray.data.read_csv(str(path), convert_options=csv.ConvertOptions(column_types=types))
        return ds.map_batches(_normalize_table, **kwargs)
    return ray.data.read_parquet(str(path)).map_batches(_normalize_table, **kwargs)


@ray.remote
def _num_rows(block: pa.Table) -> int:
    return block.num_rows


@ray.remote
def _number_block(block: pa.Table, label: str, offset: int) -> pa.Table:
    positions = pc.cast(pa.array(range(offset, offset + block.num_rows), pa.int64()), pa.string())
    ids = pc.binary_join_element_wise(pa.scalar(label), positions, ":")
    return pa.table([ids, block.column("text"), block.column("error")], schema=ROW_SCHEMA)


def number_rows(rows: ray.data.MaterializedDataset, label: str) -> ray.data.MaterializedDataset:
    """Give rows without an id the id `<label>:<row number in the file>`.

    `rows` must be materialized in file order (read with `preserve_order`); each block is numbered
    from the running offset of the blocks before it.
    """
    blocks = rows.to_arrow_refs()
    counts = ray.get([_num_rows.remote(b) for b in blocks])
    offsets = [0, *accumulate(counts)][:-1]
    return ray.data.from_arrow_refs([_number_block.remote(b, label, o) for b, o in zip(blocks, offsets)])
