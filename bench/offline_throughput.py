"""Offline throughput: the CLI job vs. the raw encoder over the same generated corpus, on the same cores.

    python -m bench.offline_throughput --model .models/tiny --name offline-small \\
        --sizes 4000,30000,300000 --parquet 30000 --profile 30000

For each size: a corpus from `workload.offline_corpus` (70% texts of 5-20 words, 30% passages of
80-250 words) written as JSONL (and, for the `--parquet` size, as parquet too); then, one after the
other, each in a fresh process:

- raw: `Encoder(...)` (timed: the model load) then one `encode(texts, dense, sparse)` call (timed);
- job: `python -m serve_app.offline --input ... --model ... --text-field text --id-field id`, timed from
  process start to exit (Python start-up, Ray start-up and shutdown, model load: all a user waits for).

The ratio is raw texts/s (model load counted) over the job's. `ratio_process` times the raw encoder as the
job is timed, from process start to exit (Python, the imports of torch and transformers, reading the
corpus: ~2-3 s that `load_s` leaves out). `phases` says where the job's fixed cost lies: seconds from its
start to Ray's start-up line, to the first encoded rows filed, to the last (its summary line), to exit.

Peak memory is the peak of the summed proportional set size (PSS: shared pages divided among their users)
of each process tree, sampled every 2 s (a sample costs CPU the job would use): for the job, the driver,
Ray's own processes, the reader and the encoder actor.

`--profile N` runs the job once more on the N-text JSONL corpus with py-spy sampling the driver and the
actor (not timed), and Ray Data's per-operator stats on; the top functions go into the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from .workload import offline_corpus

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
JOB_FLAGS = ["--text-field", "text", "--id-field", "id"]
SAMPLE_S = 2.0  # memory samples: reading a large process's smaps costs ~50 ms of CPU, taken from the job


def write_corpus(texts: list[str], folder: Path, parquet: bool) -> dict[str, Path]:
    """The corpus as `corpus.jsonl` (and `corpus.parquet`): `id`, `text` per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": folder / "corpus.jsonl"}
    with open(paths["jsonl"], "w") as f:
        f.writelines(json.dumps({"id": f"doc-{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts))
    if parquet:
        paths["parquet"] = folder / "corpus.parquet"
        pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(len(texts))], "text": texts}), paths["parquet"])
    return paths


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc: no dependency on psutil)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_measured(cmd: list[str], spy_dir: Path | None = None, env: dict | None = None) -> dict:
    """Run `cmd`; its wall time, peak PSS of its process tree, stdout/stderr (and py-spy raw profiles of the
    driver and any encoder actor into `spy_dir`)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    peak, spies, spied = 0, [], set()
    out: dict[str, str] = {}
    stamped: list[tuple[float, str]] = []  # (seconds since start, line) of both streams, as the lines arrive

    def drain(name, stream):
        lines = []
        for line in stream:
            lines.append(line)
            stamped.append((time.perf_counter() - started, line))
        out[name] = "".join(lines)

    streams = (("stdout", proc.stdout), ("stderr", proc.stderr))
    readers = [threading.Thread(target=drain, args=stream) for stream in streams]
    for t in readers:
        t.start()

    def spy(pid: int, name: str) -> None:
        assert spy_dir is not None
        spies.append(subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                       "record", "-p", str(pid), "-r", "50", "-f", "raw", "--nonblocking",
                                       "-o", str(spy_dir / f"{name}.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    if spy_dir is not None:
        spy_dir.mkdir(parents=True, exist_ok=True)
        spy(proc.pid, "driver")
    while proc.poll() is None:
        pids = _tree(proc.pid)
        peak = max(peak, sum(_pss_kib(p) for p in pids))
        if spy_dir is not None:
            for pid in pids:
                if pid not in spied and "MapWorker(MapBatches(EncodeBatch))" in _cmdline(pid):
                    spied.add(pid)
                    spy(pid, f"actor-{pid}")
        # Not a plain sleep: the wall time is read when the process ends, not up to SAMPLE_S later.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=SAMPLE_S)
    proc.wait()
    wall = time.perf_counter() - started
    for t in readers:
        t.join()
    for s in spies:
        s.wait(timeout=60)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.get('stderr', '')[-3000:]}")
    return {"wall_s": wall, "peak_pss_mib": peak / 1024, "stdout": out.get("stdout", ""),
            "stderr": out.get("stderr", ""), "stamped": sorted(stamped)}


# Lines of the job that mark where its fixed cost ends and begins: Ray's start (Ray's own log line), the
# first encoded rows filed (the first progress line is printed then), the last rows filed (the summary).
PHASE_MARKS = {"ray_up_s": "Started a local Ray instance", "first_rows_s": " rows/s | ", "last_rows_s": "done: "}


def phases(measured: dict) -> dict:
    """Seconds from the job's process start to each of `PHASE_MARKS` (as its line reached the bench: a
    line is flushed as written) and to exit; None for a mark not seen."""
    seen = {name: next((t for t, line in measured["stamped"] if mark in line), None)
            for name, mark in PHASE_MARKS.items()}
    return {**{name: None if t is None else round(t, 2) for name, t in seen.items()},
            "exit_s": round(measured["wall_s"], 2)}


def raw_worker(corpus: str, model: str, num_threads: int | None) -> None:
    """In a fresh process: load the encoder, encode every text of the JSONL corpus once; print timings."""
    with open(corpus) as f:
        texts = [json.loads(line)["text"] for line in f]
    from serve_app.core.config import EncoderConfig
    from serve_app.core.encoder import Encoder

    t0 = time.perf_counter()
    encoder = Encoder(EncoderConfig(model=model, num_threads=num_threads))
    t1 = time.perf_counter()
    out = encoder.encode(texts, dense=True, sparse=True)
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "encode_s": t2 - t1, "texts": len(texts),
                      "tokens": sum(e.n_tokens for e in out), "dtype": encoder.describe()["dtype"],
                      "torch_threads": encoder.describe()["torch_threads"]}))


def run_raw(corpus: Path, model: str, num_threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "bench.offline_throughput", "--raw-worker", str(corpus), "--model", model]
    measured = run_measured(cmd + (["--num-threads", str(num_threads)] if num_threads else []))
    return {**json.loads(measured["stdout"].strip().splitlines()[-1]), "peak_pss_mib": measured["peak_pss_mib"],
            "process_s": measured["wall_s"]}


def job_command(corpus: Path, out: Path, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "serve_app.offline", "--input", str(corpus), "--output", str(out),
            "--model", model, *JOB_FLAGS, *extra]


def run_job(corpus: Path, out: Path, model: str, extra: list[str]) -> dict:
    # Unbuffered: the summary line reaches the bench when written, not at exit (its time is a phase).
    measured = run_measured(job_command(corpus, out, model, extra), env={"PYTHONUNBUFFERED": "1"})
    done = next(line for line in measured["stdout"].splitlines() if line.startswith("done: "))
    fields = dict(re.findall(r"(\S+)=(\S+)", done))
    progress = [line for line in measured["stderr"].splitlines() if " rows/s | " in line]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": measured["wall_s"], "peak_pss_mib": measured["peak_pss_mib"], "rows": int(fields["rows"]),
            "errors": int(fields["errors"]), "job_wall_s": float(fields["wall"].rstrip("s")), "done_line": done,
            "progress_lines": progress[-3:], "phases": phases(measured)}


def top_functions(path: Path, k: int = 12) -> dict:
    """Top functions of a py-spy raw profile: share of samples in the function itself and under it."""
    own: Counter = Counter()
    under: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    return {"samples": total,
            "self": [[round(c / total, 3), f] for f, c in own.most_common(k)],
            "inclusive": [[round(c / total, 3), f] for f, c in under.most_common(k + 8)]}


STATS_WRAPPER = ("import sys, ray.data; ray.data.DataContext.get_current().enable_auto_log_stats = True; "
                 "from serve_app.offline.__main__ import main; main(sys.argv[1:])")


def profile(corpus: Path, out: Path, model: str, spy_dir: Path, extra: list[str]) -> dict:
    """One job run under py-spy, Ray Data's stats logged; the top functions of driver and actor."""
    cmd = [sys.executable, "-c", STATS_WRAPPER, *job_command(corpus, out, model, extra)[3:]]
    measured = run_measured(cmd, spy_dir=spy_dir)
    shutil.rmtree(out, ignore_errors=True)
    stats = measured["stderr"]
    stats = stats[stats.find("Operator "):] if "Operator " in stats else ""
    result = {"wall_s": measured["wall_s"], "ray_data_stats": stats[-6000:]}
    for path in sorted(spy_dir.glob("*.txt")):
        result[path.stem.split("-")[0]] = top_functions(path)
    return result


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags else "AVX2"
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({isa}), no GPU"


def main(argv: list[str] | None = None) -> dict:
    """Run the sizes and write bench/results/<name>.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="offline-small")
    p.add_argument("--sizes", default="4000,30000,300000", help="corpus sizes in texts, comma-separated")
    p.add_argument("--parquet", type=int, default=0, help="also run the job on this size's corpus as parquet")
    p.add_argument("--profile", type=int, default=0, help="profile the job on this size (py-spy, Ray Data stats)")
    p.add_argument("--num-threads", type=int, help="torch threads of the raw encoder (default: torch's, 1/core)")
    p.add_argument("--job-args", default="", help="extra CLI flags for the job, e.g. '--batch-size 512'")
    p.add_argument("--raw-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_worker:
        raw_worker(args.raw_worker, args.model, args.num_threads)
        return {}
    extra = args.job_args.split()
    runs, profiled = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            paths = write_corpus(offline_corpus(n), Path(tmp) / f"c{n}", parquet=n == args.parquet)
            generated_s = time.perf_counter() - t0
            raw = run_raw(paths["jsonl"], args.model, args.num_threads)
            raw_total = raw["load_s"] + raw["encode_s"]
            for fmt, path in paths.items():
                job = run_job(path, Path(tmp) / "out", args.model, extra)
                assert job["rows"] == n and job["errors"] == 0, job
                runs.append({"texts": n, "format": fmt, "tokens": raw["tokens"], "generate_s": generated_s,
                             "raw": raw, "job": job, "ratio": raw_total / job["wall_s"],
                             "ratio_excl_load": raw["encode_s"] / job["wall_s"],
                             "ratio_in_process": raw_total / job["job_wall_s"],
                             "ratio_process": raw["process_s"] / job["wall_s"]})
                print(json.dumps(runs[-1]), flush=True)
            if n == args.profile:
                profiled = profile(paths["jsonl"], Path(tmp) / "out", args.model, Path(tmp) / "spy", extra)
            shutil.rmtree(Path(tmp) / f"c{n}")
    result = {"name": args.name, "model": args.model, "machine": machine(), "runs": runs, "profile": profiled,
              "command": "python -m bench.offline_throughput " + " ".join(argv if argv is not None else sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
