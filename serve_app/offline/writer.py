"""One shard's output as the encoded rows arrive: embeddings to `data/`, failed rows to `errors/`.

Files are written into the shard's staging folder while the job runs, a row group at a time, and
moved into place only when the shard is complete (see `shards`). Row groups hold about
`ROW_GROUP_BYTES` of Arrow data: large enough for fast scans, small enough that the writer holds
little in memory; a file is closed and the next one started after `FILE_BYTES`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .arrow import arrow_schema

ROW_GROUP_BYTES = 64 << 20
FILE_BYTES = 1 << 30
ERROR_SCHEMA = pa.schema([("id", pa.string()), ("error", pa.string()), ("file", pa.string()), ("row", pa.int64())])


class _Parts:
    """Parquet files `part-00000.parquet`, ... in `folder`, created on the first row, row groups buffered."""

    def __init__(self, folder: Path, schema: pa.Schema):
        self.folder, self.schema = folder, schema
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._files = 0
        self._file_bytes = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buffer.append(table)
            self._buffered += table.nbytes
            if self._buffered >= ROW_GROUP_BYTES:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.folder / f"part-{self._files:05d}.parquet", self.schema)
            self._files += 1
        group = pa.concat_tables(self._buffer)
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._file_bytes += self._buffered
        self._buffer, self._buffered = [], 0
        if self._file_bytes >= FILE_BYTES:
            self._writer.close()
            self._writer, self._file_bytes = None, 0

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ShardWriter:
    """Split encoded rows (`EncodeBatch` output) into the shard's data and error files, and count them."""

    def __init__(self, staging: Path, file: str, colbert: bool, text: bool):
        self._staging, self._file = staging, file
        self._colbert, self._text = colbert, text
        self._data: _Parts | None = None  # its schema needs the vector width: known from the first rows
        self._errors = _Parts(staging / "errors", ERROR_SCHEMA)
        self.rows = self.tokens = self.errors = 0

    def add(self, table: pa.Table) -> None:
        """File each row of `table` (all of this shard): embedded rows as data, failed rows as errors."""
        error = table.column("error")
        failed = error.null_count < table.num_rows
        good = table.filter(pc.is_null(error)) if failed else table
        if failed:
            bad = table.filter(pc.is_valid(error))
            self._errors.add(pa.table([bad.column("id"), bad.column("error"),
                                       pa.array([self._file] * bad.num_rows, pa.string()), bad.column("row")],
                                      schema=ERROR_SCHEMA))
            self.errors += bad.num_rows
        if good.num_rows:
            if self._data is None:
                dim = good.schema.field("dense").type.list_size
                self._data = _Parts(self._staging / "data", arrow_schema(dim, self._colbert, self._text))
            self._data.add(good.select(self._data.schema.names).cast(self._data.schema))
            self.rows += good.num_rows
            self.tokens += int(pc.sum(good.column("n_tokens")).as_py() or 0)

    def close(self) -> None:
        """Write what is buffered and close the files."""
        if self._data is not None:
            self._data.close()
        self._errors.close()
