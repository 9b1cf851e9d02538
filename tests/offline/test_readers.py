"""The offline readers without Ray: blocks cut by size, rows numbered in file order, none lost."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from serve_app.offline.readers import OVERSHOOT, Fields, read_file, sized_blocks


def test_sized_blocks_cut_by_bytes_without_losing_or_moving_rows():
    tables = [pa.table({"x": list(range(i, i + n))}) for i, n in ((0, 10), (10, 5000), (5010, 3), (5013, 20000))]
    blocks = list(sized_blocks(tables, target=8192))
    assert [v for b in blocks for v in b.column("x").to_pylist()] == list(range(25013))
    assert all(8192 <= b.nbytes <= OVERSHOOT * 8192 + 8 for b in blocks[:-1])  # + one row's rounding
    assert blocks[-1].nbytes <= OVERSHOOT * 8192 + 8


def test_every_format_streams_numbered_rows_in_order(tmp_path):
    texts = [f"text {i} " + "word " * (i % 50) for i in range(3000)]
    lines = [json.dumps({"id": f"j{i}", "text": t}) + "\n" for i, t in enumerate(texts)]
    (tmp_path / "a.jsonl").write_text("".join(lines))
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(3000)], "text": texts}), tmp_path / "b.parquet",
                   row_group_size=700)
    (tmp_path / "c.csv").write_text("id,text\n" + "".join(f"c{i},{t}\n" for i, t in enumerate(texts)))
    for name in ("a.jsonl", "b.parquet", "c.csv"):
        blocks = list(read_file(str(tmp_path / name), 7, Fields("text", "id", name), block_bytes=16 << 10))
        assert len(blocks) > 5, name  # streamed in pieces, not one table per file
        table = pa.concat_tables(blocks)
        assert table.column("row").to_pylist() == list(range(1, 3001)), name
        assert table.column("text").to_pylist() == texts, name
        assert set(table.column("shard").to_pylist()) == {7} and table.column("error").null_count == 3000
