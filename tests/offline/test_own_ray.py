"""The CLI on a Ray of its own (no `--address`, no RAY_ADDRESS), as a user on one host runs it: it stops its
Ray and ends its process as soon as the output is committed (`__main__._exit_at_once`, without Python's
own teardown), so nothing it wrote may be missing and no Ray process may outlive it.

One job, ~30 s: Ray's own start-up on the test's cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.offline.corpora import encoder_flags, rows_by_id, write_jsonl

GOOD = [{"id": f"doc-{i}", "text": f"row {i} of a job on its own Ray " + "word " * (i % 5)} for i in range(40)]
BAD = {"id": "doc-bad", "text": None}  # filed in errors with its reason, never dropped
LEFT_S = 20.0  # how long Ray's processes may take to end after the driver (Ray's shutdown waits ~1 s on each)


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return children


def _start_time(pid: int) -> str | None:
    """A process's start time (in clock ticks since boot): tells it from a later one given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _descendants(pid: int) -> dict[int, str | None]:
    """`pid`'s descendants (Ray's processes and workers, when `pid` is a driver) and their start times."""
    children, found, todo = _children(), {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = _start_time(child)
            todo.append(child)
    return found


def test_cli_on_its_own_ray_commits_every_row_then_leaves_no_ray_process(tmp_path, encoder_config):
    write_jsonl(tmp_path / "in" / "a.jsonl", [*GOOD, BAD])
    out = tmp_path / "out"
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-m", "serve_app.offline", "--input", str(tmp_path / "in"),
                               "--output", str(out), *encoder_flags(encoder_config), "--id-field", "id"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[int, str | None] = {}
    while driver.poll() is None:  # Ray's processes, seen while the driver runs (after it, they are orphans)
        seen.update(_descendants(driver.pid))
        time.sleep(0.2)
    stdout, stderr = driver.communicate()
    assert driver.returncode == 0, stderr[-3000:]
    assert stdout.splitlines()[-1].startswith("done: rows=40 "), stdout

    assert sorted(rows_by_id(out)) == sorted(row["id"] for row in GOOD)
    assert list(rows_by_id(out, "errors")) == [BAD["id"]]

    assert len(seen) >= 3, seen  # at least the GCS, the raylet and the encoder actor were seen
    deadline = time.monotonic() + LEFT_S
    while (left := [pid for pid, started in seen.items() if started and _start_time(pid) == started]):
        assert time.monotonic() < deadline, f"still running {LEFT_S:.0f} s after the driver: {left}"
        time.sleep(0.5)
