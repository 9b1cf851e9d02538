"""The offline job's progress line and row totals (no Ray: the counting and the formatting alone)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from serve_app.offline import progress as progress_module
from serve_app.offline.inputs import find_inputs
from serve_app.offline.progress import Printer, Progress, estimate_rows
from tests.support.waiting import wait_until


def test_totals_come_from_parquet_metadata_and_counted_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n{"text": "no newline at the end"}')
    (tmp_path / "b.csv").write_text("text\nx\ny\n")
    pq.write_table(pa.table({"text": ["x"] * 7}), tmp_path / "c.parquet", row_group_size=3)
    assert [estimate_rows(f.path) for f in find_inputs(str(tmp_path))] == [3, 2, 7]


def test_line_shows_done_total_rates_eta_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n' * 100)
    progress = Progress(find_inputs(str(tmp_path)))
    assert wait_until(lambda: progress.total is not None, deadline_s=10, interval=0.01)  # counted in a thread
    progress.started -= 10  # as if it had run 10 s
    progress.add(rows=20, errors=5, tokens=1000)
    line = progress.line()
    assert line.startswith("rows 25/100 (25%) | ") and "| errors 5" in line
    assert " rows/s | " in line and " tokens/s | " in line and "ETA 0:" in line
    progress.shard_done(0, 90)  # the file held 90 rows (e.g. 10 blank lines): the exact count wins
    assert progress.total == 90


class _Clock:
    """A monotonic clock that reads what the test sets: `time.monotonic()` counts from the host's boot, so
    a test that used the real one would depend on how long the machine has been up."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_printer_prints_the_first_line_at_once_even_on_a_host_booted_seconds_ago(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    clock = _Clock(now=3.0)  # a new VM or pod: the monotonic clock started 3 s ago, far less than the interval
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    stream = io.StringIO()
    Printer(interval=5.0, stream=stream)(Progress(find_inputs(str(tmp_path))))
    assert "rows 0" in stream.getvalue()


def test_printer_prints_at_most_once_per_interval(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    clock = _Clock(now=1_000.0)
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    stream = io.StringIO()
    printer, progress = Printer(interval=5.0, stream=stream), Progress(find_inputs(str(tmp_path)))
    for step in range(10):  # 0, 1, ... 9 s: lines at 0 and 5 s only
        clock.now = 1_000.0 + step
        printer(progress)
    assert len(stream.getvalue().splitlines()) == 2
