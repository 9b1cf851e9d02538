"""The offline job's progress line and row totals (no Ray: the counting and the formatting alone)."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq

from serve_app.offline.inputs import find_inputs
from serve_app.offline.progress import Printer, Progress, estimate_rows


def test_totals_come_from_parquet_metadata_and_counted_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n{"text": "no newline at the end"}')
    (tmp_path / "b.csv").write_text("text\nx\ny\n")
    pq.write_table(pa.table({"text": ["x"] * 7}), tmp_path / "c.parquet", row_group_size=3)
    assert [estimate_rows(f.path) for f in find_inputs(str(tmp_path))] == [3, 2, 7]


def test_line_shows_done_total_rates_eta_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n' * 100)
    progress = Progress(find_inputs(str(tmp_path)))
    deadline = time.monotonic() + 10
    while progress.total is None and time.monotonic() < deadline:  # counted in a background thread
        time.sleep(0.01)
    progress.started -= 10  # as if it had run 10 s
    progress.add(rows=20, errors=5, tokens=1000)
    line = progress.line()
    assert line.startswith("rows 25/100 (25%) | ") and "| errors 5" in line
    assert " rows/s | " in line and " tokens/s | " in line and "ETA 0:" in line
    progress.shard_done(0, 90)  # the file held 90 rows (e.g. 10 blank lines): the exact count wins
    assert progress.total == 90


def test_printer_prints_at_most_once_per_interval(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    stream = io.StringIO()
    printer, progress = Printer(interval=3600, stream=stream), Progress(find_inputs(str(tmp_path)))
    for _ in range(5):
        printer(progress)
    assert len(stream.getvalue().splitlines()) == 1 and "rows 0" in stream.getvalue()
