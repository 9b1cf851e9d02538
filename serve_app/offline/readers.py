"""Read the input files, streaming, into row blocks of `shard`, `row`, `id`, `text` (or `token_ids`), `error`.

One Ray Data read task per file, which numbers its rows as it goes (no second pass, no materialized
copy of the file): a block leaves the task as soon as it is parsed, so encoding and writing start
while the file is still being read. `shard` is the file's index in the job's list of files. Blocks are
cut by size (`sized_blocks`): each is one encoder call, so a call holds about as much text, and so
about as many tokens, whatever the length of the rows.

`row` is where the row is in its file, 1-based: the line of a JSONL file (blank lines are skipped but
counted, so an editor's "go to line" finds it), the data row of a CSV file (header not counted), the row
of a parquet file. A row whose text is missing, null or not a string keeps its place with an `error`
reason instead of being dropped; without an id field, the id is `<shard>:<row - 1>` (stable across runs).
With `Fields.token_ids`, the field holds each row's token ids (a JSON array, a parquet list of integers),
checked here by the core's rule (`token_ids_problem`: a non-empty list of integers in any vocabulary); the
actor checks them against its model's vocabulary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ..core.inputs import text_problem, token_ids_problem
from .inputs import FORMATS, InputFile

ROW_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("id", pa.string()), ("text", pa.string()),
                        ("error", pa.string())])
IDS_ROW_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("id", pa.string()),
                            ("token_ids", pa.list_(pa.int64())), ("error", pa.string())])
CHUNK_BYTES = 4 << 20  # JSONL/CSV bytes parsed at a time
PARQUET_ROWS = 1024  # parquet rows decoded at a time
OVERSHOOT = 1.2  # blocks are cut at this x the target: Ray Data slices a block over 1.5x, merges one under 1x


class Fields(NamedTuple):
    """Which fields hold the text (or, with `token_ids`, the token ids) and the id (None: ids are made from row
    numbers, prefixed by `label`)."""

    text: str
    id: str | None
    label: str
    token_ids: bool = False

    @property
    def schema(self) -> pa.Schema:
        """The blocks' schema: the input in `text`, or in `token_ids`."""
        return IDS_ROW_SCHEMA if self.token_ids else ROW_SCHEMA

    def problem(self, value) -> str | None:
        """Why `value` cannot be encoded as this field's input, or None."""
        return token_ids_problem(value) if self.token_ids else _text_reason(value)


def _text_reason(value) -> str | None:
    """The error a row's text gets (`text_problem`, worded for the errors file: `null text`, `text is a ...`)."""
    problem = text_problem(value)
    return None if problem is None else "null text" if value is None else f"text {problem}"


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


def _jsonl_block(shard: int, lines: list[bytes], first: int, fields: Fields) -> pa.Table:
    """Parse `lines` (line `first` + 1 onwards); blank lines skipped, their numbers kept."""
    rows, ids, texts, errors = [], [], [], []
    text_field, id_field = fields.text, fields.id
    for row, raw in enumerate(lines, first + 1):
        if not raw.strip():
            continue
        obj, error = _parse_line(raw, row)
        if error is None:
            error = f"missing field {text_field!r}" if text_field not in obj else fields.problem(obj[text_field])
        key, text = (obj.get(id_field) if id_field else f"{fields.label}:{row - 1}"), obj.get(text_field)
        if id_field and key is None and obj:
            error = f"missing id field {id_field!r}"
        rows.append(row)
        ids.append(None if key is None else str(key).encode("utf-8", "backslashreplace").decode())
        texts.append(text if error is None else None)
        errors.append(error)
    return pa.table([pa.array([shard] * len(rows), pa.int32()), rows, ids, texts, errors], schema=fields.schema)


def read_jsonl(path: str, shard: int, fields: Fields) -> Iterator[pa.Table]:
    """Split on b"\\n" only: a JSON string may hold a raw U+2028, U+2029 or U+0085, where
    `str.splitlines` would cut one document in two."""
    with open(path, "rb") as f:
        number, tail = 0, b""
        while chunk := f.read(CHUNK_BYTES):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()  # an unfinished line: completed by the next chunk
            yield _jsonl_block(shard, lines, number, fields)
            number += len(lines)
        if tail:
            yield _jsonl_block(shard, [tail], number, fields)


def _table_block(shard: int, batch: pa.RecordBatch | pa.Table, first: int, fields: Fields) -> pa.Table:
    """A CSV or parquet batch (its first row is row `first` + 1) as rows: checked, numbered, ids made."""
    n = batch.num_rows
    text_field, id_field = fields.text, fields.id
    rows = pa.array(range(first + 1, first + n + 1), pa.int64())
    if id_field:
        ids = (pc.cast(batch.column(id_field), pa.string()) if id_field in batch.column_names
               else pa.nulls(n, pa.string()))
    else:
        ids = pc.binary_join_element_wise(pa.scalar(fields.label), pc.cast(pc.subtract(rows, 1), pa.string()), ":")
    kind = fields.schema.field(3).type
    if text_field not in batch.column_names:
        texts, errors = pa.nulls(n, kind), pa.array([f"missing field {text_field!r}"] * n, pa.string())
    elif fields.token_ids:  # rare and checked row by row (a corpus of ids is already past the tokenizer)
        values = batch.column(text_field).to_pylist()
        problems = [fields.problem(v) for v in values]
        texts = pa.array([v if p is None else None for v, p in zip(values, problems)], kind)
        errors = pa.array(problems, pa.string())
    else:
        column = batch.column(text_field)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            texts = pa.nulls(n, pa.string())
            errors = pa.array([_text_reason(v) for v in column.to_pylist()], pa.string())
        else:
            texts = pc.cast(column, pa.string())
            errors = pc.if_else(pc.is_null(texts), pa.scalar("null text"), pa.scalar(None, pa.string()))
    if id_field:
        errors = pc.if_else(pc.is_null(ids), pa.scalar(f"missing id field {id_field!r}"), errors)
    return pa.table([pa.array([shard] * n, pa.int32()), rows, ids, texts, errors], schema=fields.schema)


def read_parquet(path: str, shard: int, fields: Fields) -> Iterator[pa.Table]:
    """Only the text and id columns, in file order."""
    file = pq.ParquetFile(path)
    names = set(file.schema_arrow.names)
    columns = [c for c in (fields.text, fields.id) if c and c in names]
    first = 0
    for batch in file.iter_batches(batch_size=PARQUET_ROWS, columns=columns, use_threads=False):
        yield _table_block(shard, batch, first, fields)
        first += batch.num_rows


def read_csv(path: str, shard: int, fields: Fields) -> Iterator[pa.Table]:
    """The text and id columns read as strings (a CSV "123" stays the text "123")."""
    from pyarrow import csv

    types = {f: pa.string() for f in (fields.text, fields.id) if f}
    reader = csv.open_csv(path, read_options=csv.ReadOptions(block_size=CHUNK_BYTES, use_threads=False),
                          convert_options=csv.ConvertOptions(column_types=types))
    first = 0
    for batch in reader:
        yield _table_block(shard, batch, first, fields)
        first += batch.num_rows


def sized_blocks(tables: Iterable[pa.Table], target: int) -> Iterator[pa.Table]:
    """`tables` re-cut, without copying, into blocks of `target` to `OVERSHOOT` x `target` bytes (the last one
    may be smaller). Ray Data (its block size set to `target`) then passes each on as it is: a block over its
    target leaves the read task at once, and only one over 1.5x the target is sliced."""
    pending: list[pa.Table] = []
    size = 0
    for table in tables:
        while table.num_rows:
            per_row = max(1.0, table.nbytes / table.num_rows)
            take = min(table.num_rows, max(1, math.ceil((OVERSHOOT * target - size) / per_row)))
            pending.append(table.slice(0, take))
            size += pending[-1].nbytes
            table = table.slice(take)
            if size >= target:
                yield pa.concat_tables(pending)
                pending, size = [], 0
    if pending:
        yield pa.concat_tables(pending)


def read_file(path: str, shard: int, fields: Fields, block_bytes: int) -> Iterator[pa.Table]:
    """Every row of one input file, as blocks of `fields.schema` of about `block_bytes`, in file order."""
    kind = FORMATS[Path(path).suffix.lower()]
    parsed = (read_jsonl(path, shard, fields) if kind == "json" else read_csv(path, shard, fields) if kind == "csv"
              else read_parquet(path, shard, fields))
    yield from sized_blocks(parsed, block_bytes)


class CorpusSource(Datasource):
    """The job's input files as one Ray Data source: a read task per file, in the files' order."""

    def __init__(self, files: list[InputFile], text_field: str, id_field: str | None, block_bytes: int,
                 token_ids: bool = False):
        super().__init__()
        self._files = files
        self._text_field, self._id_field, self._block_bytes = text_field, id_field, block_bytes
        self._token_ids = token_ids

    def estimate_inmemory_data_size(self) -> int | None:
        """The files' bytes on disk (what Ray Data plans with)."""
        return sum(f.path.stat().st_size for f in self._files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        """One read task per file, in the files' order, whatever `parallelism` Ray Data asks for."""
        tasks = []
        for index, file in enumerate(self._files):
            fields = Fields(self._text_field, self._id_field, file.shard, self._token_ids)
            read = partial(read_file, str(file.path), index, fields, self._block_bytes)
            meta = BlockMetadata(num_rows=None, size_bytes=file.path.stat().st_size, exec_stats=None,
                                 input_files=[str(file.path)])
            tasks.append(ReadTask(read, meta, schema=fields.schema, per_task_row_limit=per_task_row_limit))
        return tasks
