"""What a running job has done, as one readable line: rows done / total, rows/s, tokens/s, ETA, errors.

The total is known up front for parquet (its metadata) and counted for JSONL and CSV in a background
thread (lines, so blank lines and quoted newlines may make it a slight overestimate until the file is
done); until then the line shows no total and no ETA.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from .inputs import FORMATS, InputFile

COUNT_CHUNK = 8 << 20


def estimate_rows(path: Path) -> int:
    """Rows in `path`: exact for parquet, newline-terminated lines (less a CSV header) otherwise."""
    kind = FORMATS[path.suffix.lower()]
    if kind == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(COUNT_CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(0, lines - 1) if kind == "csv" else lines


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts of this run (rows embedded, rows failed, tokens) against the rows its shards hold."""

    def __init__(self, files: list[InputFile]):
        self.started = time.monotonic()
        self.rows = self.errors = self.tokens = 0
        self._estimates: dict[int, int] = {}
        self._exact: dict[int, int] = {}
        self._n_files = len(files)
        self._lock = threading.Lock()
        self._counter = threading.Thread(target=self._count, args=(files,), daemon=True, name="count-rows")
        self._counter.start()

    def _count(self, files: list[InputFile]) -> None:
        for index, file in enumerate(files):
            try:
                estimate = estimate_rows(file.path)
            except OSError:
                return  # no total then; the job itself reports the file's problem
            with self._lock:
                self._estimates[index] = estimate

    def add(self, rows: int, errors: int, tokens: int) -> None:
        """Rows filed by the writer (embedded or failed) and their tokens."""
        self.rows += rows
        self.errors += errors
        self.tokens += tokens

    def shard_done(self, index: int, rows: int) -> None:
        """The exact row count of a finished shard (embedded + failed) replaces its estimate."""
        with self._lock:
            self._exact[index] = rows

    @property
    def total(self) -> int | None:
        """Rows of every shard of this run, once each is counted (None before)."""
        with self._lock:
            known = {**self._estimates, **self._exact}
        return sum(known.values()) if len(known) == self._n_files else None

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def line(self) -> str:
        """rows done[/total (percent)], rows/s, tokens/s, ETA (when the total is known), errors."""
        done, seconds, total = self.rows + self.errors, self.elapsed, self.total
        rate = done / seconds if seconds > 0 else 0.0
        parts = [f"rows {done:,}" + (f"/{total:,} ({100 * done / total:.0f}%)" if total else ""),
                 f"{rate:,.0f} rows/s", f"{self.tokens / seconds if seconds > 0 else 0:,.0f} tokens/s"]
        if total and rate > 0:
            parts.append(f"ETA {_duration(max(0, total - done) / rate)}")
        parts.append(f"errors {self.errors:,}")
        return " | ".join(parts)


class Printer:
    """A `Progress` callback that prints its line at most every `interval` seconds (to stderr)."""

    def __init__(self, interval: float = 5.0, stream=None):
        self.interval = interval
        self._stream = stream or sys.stderr
        # None: nothing printed yet. Not 0.0: the monotonic clock counts from the host's boot, so on a host up
        # for less than `interval` (a new VM or pod) the first line would wait.
        self._last: float | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            print(f"[{_duration(progress.elapsed)}] {progress.line()}", file=self._stream, flush=True)


ProgressCallback = Callable[[Progress], None]
