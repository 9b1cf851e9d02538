"""Find the input files, name their shards, and read them into rows of `id`, `text`, `error`, `row`.

`row` is where the row is in its file, 1-based: the line of a JSONL file (blank lines are skipped but
counted, so an editor's "go to line" finds it), the data row of a CSV file (header not counted), the row
of a parquet file. A row whose text is missing, null or not a string keeps its place with an `error`
reason instead of being dropped; without an id field, the id is `<shard>:<row - 1>` (stable across runs).
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator
from itertools import accumulate, takewhile
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.dataset import MaterializedDataset
from ray.data.datasource import FileBasedDatasource

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".csv": "csv"}
ROW_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("error", pa.string()), ("row", pa.int64())])


class InputFile(NamedTuple):
    """One input file and the name of its shard (its output folders, its manifest entry, its ids' prefix)."""

    path: Path
    shard: str


def _root(path: str) -> Path:
    """What shard names are relative to: a folder itself, a file's folder, or a glob's path up to its first
    wildcard (`corpus/*/*.jsonl` -> `corpus`), so files of the same name in different folders stay apart."""
    if glob.has_magic(path):
        return Path(*takewhile(lambda part: not glob.has_magic(part), Path(path).parts))
    return Path(path) if Path(path).is_dir() else Path(path).parent


def shard_name(path: Path, root: Path) -> str:
    """A filesystem-safe name of an input file from its path relative to `root` (`en/part-0.jsonl` ->
    `en__part-0.jsonl`). Not one-to-one (`en__part-0.jsonl` gets the same name): `find_inputs` refuses
    such pairs rather than change the names of existing outputs."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", path.relative_to(root).as_posix())


def find_inputs(path: str) -> list[InputFile]:
    """A file, every supported file under a folder, or a glob; sorted, so shard order is stable.

    Raises `ValueError` when two files would share a shard name (compared ignoring case, as macOS and
    Windows file systems do): one would overwrite or hide the other's output.
    """
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
    root = _root(path)
    inputs = [InputFile(p, shard_name(p, root)) for p in sorted(set(files))]
    seen: dict[str, Path] = {}
    for file in inputs:
        other = seen.setdefault(file.shard.casefold(), file.path)
        if other != file.path:
            raise ValueError(f"inputs {str(other)!r} and {str(file.path)!r} would share the shard name "
                             f"{file.shard!r} (and one's output would be lost); rename one of them or embed "
                             "them into separate outputs")
    return inputs


class _JsonLines(FileBasedDatasource):
    """Lines of a JSONL file as raw bytes with their 1-based line numbers; blank lines skipped.

    Splits on b"\\n" only: a JSON string may hold a raw U+2028, U+2029 or U+0085, where Ray's
    `read_text` (`str.splitlines`) would cut one document in two. Reads in chunks, one block each,
    so line numbers come without a second pass over the file.
    """

    CHUNK_BYTES = 8 << 20

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        number, tail = 0, b""
        while chunk := f.read(self.CHUNK_BYTES):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()  # an unfinished line: completed by the next chunk
            yield self._block(lines, number)
            number += len(lines)
        if tail:
            yield self._block([tail], number)

    @staticmethod
    def _block(lines: list[bytes], number: int) -> pa.Table:
        kept = [(n, line) for n, line in enumerate(lines, number + 1) if line.strip()]
        return pa.table({"row": pa.array([n for n, _ in kept], pa.int64()),
                         "line": pa.array([line for _, line in kept], pa.binary())})


def _describe(value) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a JSON "\\ud800" escape: Arrow (and the tokenizer) need valid Unicode
            return "text contains an unpaired UTF-16 surrogate (not valid Unicode)"
        return None
    return "null text" if value is None else f"text is a {type(value).__name__}, not a string"


def _parse_line(raw: bytes, row: int) -> tuple[dict, str | None]:
    """The line's JSON object, or `{}` and why not."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # one bad line must not fail the whole file
        return {}, f"line is not valid UTF-8 (byte {exc.start + 1})"
    if row == 1:
        line = line.removeprefix("\ufeff")  # a byte order mark, as some Windows tools write
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    return (obj, None) if isinstance(obj, dict) else ({}, "line is not a JSON object")


def _parse_jsonl(batch: pa.Table, text_field: str, id_field: str | None, label: str) -> pa.Table:
    ids, texts, errors = [], [], []
    rows = batch.column("row").to_pylist()
    for row, raw in zip(rows, batch.column("line").to_pylist()):
        obj, error = _parse_line(raw, row)
        if error is None:
            error = f"missing field {text_field!r}" if text_field not in obj else _describe(obj[text_field])
        key, text = (obj.get(id_field) if id_field else f"{label}:{row - 1}"), obj.get(text_field)
        if id_field and key is None and obj:
            error = f"missing id field {id_field!r}"
        ids.append(None if key is None else str(key).encode("utf-8", "backslashreplace").decode())
        texts.append(text if error is None else None)
        errors.append(error)
    return pa.table([ids, texts, errors, rows], schema=ROW_SCHEMA)


def _normalize_table(batch: pa.Table, text_field: str, id_field: str | None) -> pa.Table:
    n = batch.num_rows
    if id_field and id_field in batch.column_names:
        ids = pc.cast(batch.column(id_field), pa.string())
    else:
        ids = pa.nulls(n, pa.string())
    rows = pa.nulls(n, pa.int64())  # numbered by `_number_block` once the blocks' order is known
    if text_field not in batch.column_names:
        return pa.table([ids, pa.nulls(n, pa.string()), pa.array([f"missing field {text_field!r}"] * n), rows],
                        schema=ROW_SCHEMA)
    column = batch.column(text_field)
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        texts, errors = pa.nulls(n, pa.string()), pa.array([_describe(v) for v in column.to_pylist()], pa.string())
    else:
        texts = pc.cast(column, pa.string())
        errors = pc.if_else(pc.is_null(texts), pa.scalar("null text"), pa.scalar(None, pa.string()))
    if id_field:
        errors = pc.if_else(pc.is_null(ids), pa.scalar(f"missing id field {id_field!r}"), errors)
    return pa.table([ids, texts, errors, rows], schema=ROW_SCHEMA)


def read_rows(path: Path, text_field: str, id_field: str | None, label: str) -> MaterializedDataset:
    """One input file, in file order, as `id`, `text`, `error`, `row`; `label` prefixes ids made from row numbers."""
    kind = FORMATS[path.suffix.lower()]
    context = ray.data.DataContext.get_current()
    keep_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:  # CSV and parquet rows are numbered by their blocks' positions: reading must keep the file's order
        if kind == "json":
            # Parse lines here: pyarrow's JSON reader fails a whole file on a mixed-type field or a bad line.
            return ray.data.read_datasource(_JsonLines(str(path))).map_batches(
                _parse_jsonl, fn_kwargs={"text_field": text_field, "id_field": id_field, "label": label},
                batch_format="pyarrow").materialize()
        if kind == "csv":
            from pyarrow import csv

            types = {f: pa.string() for f in (text_field, id_field) if f}
            ds = ray.data.read_csv(str(path), convert_options=csv.ConvertOptions(column_types=types))
        else:
            ds = ray.data.read_parquet(str(path))
        rows = ds.map_batches(_normalize_table, fn_kwargs={"text_field": text_field, "id_field": id_field},
                              batch_format="pyarrow").materialize()
    finally:
        context.execution_options.preserve_order = keep_order
    return number_rows(rows, None if id_field else label)


@ray.remote
def _num_rows(block: pa.Table) -> int:
    return block.num_rows


@ray.remote
def _number_block(block: pa.Table, label: str | None, offset: int) -> pa.Table:
    rows = pa.array(range(offset + 1, offset + block.num_rows + 1), pa.int64())
    ids = block.column("id")
    if label is not None:
        ids = pc.binary_join_element_wise(pa.scalar(label), pc.cast(pc.subtract(rows, 1), pa.string()), ":")
    return pa.table([ids, block.column("text"), block.column("error"), rows], schema=ROW_SCHEMA)


def number_rows(rows: MaterializedDataset, label: str | None) -> MaterializedDataset:
    """Fill in `row` (and, given a `label`, the id `<label>:<row - 1>`) from each block's running offset.

    `rows` must be materialized in file order (read with `preserve_order`).
    """
    blocks = rows.to_arrow_refs()
    counts = ray.get([_num_rows.remote(b) for b in blocks])
    offsets = [0, *accumulate(counts)][:-1]
    return ray.data.from_arrow_refs(
        [_number_block.remote(b, label, o) for b, o in zip(blocks, offsets)])
