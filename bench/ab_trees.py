"""Two source trees of this project served in turn, one text per request: which change is faster.

    python -m bench.ab_trees OLD_TREE NEW_TREE [--rounds 2]

One-text-per-request throughput here moves by tens of percent between runs, so a single before/after
pair decides nothing. This serves each tree (`bench.servers.start_ours`, as `bench.serve_load` runs
`ours`) alternately for `--rounds` rounds. Each turn measures c=1, 16 and 64 twice for 5 s, and records
requests/s, p50 and the server's CPU ms per request. Each tree needs `.venv` and `.models/tiny`. Prints
one line per tree and level, and writes bench/results/ab-trees.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (1, 16, 64)
# Run inside each tree, with that tree's interpreter and code.
_ONE_TURN = r'''
import asyncio, json, sys
from pathlib import Path
from transformers import AutoTokenizer
from bench import servers, serve_load
from bench.workload import short_queries
model = str(Path(".models/tiny").resolve())
texts = short_queries(512, AutoTokenizer.from_pretrained(model), seed=0)
server = servers.start_ours(model, 8451, Path("bench/results/ab-trees-logs"), num_threads=1)
rows = []
try:
    payloads, counts = serve_load._payloads(texts, 1)
    url = server.url + server.route
    asyncio.run(serve_load._load(url, payloads, counts, 16, 2, None))
    for c in LEVELS:
        for _ in range(2):
            cpu = server.cpu_seconds()
            row = asyncio.run(serve_load._load(url, payloads, counts, c, 5, None))
            row.update(concurrency=c, cpu_ms=(server.cpu_seconds() - cpu) * 1e3 / max(row["requests"], 1))
            rows.append(row)
finally:
    server.stop()
print("RESULT", json.dumps(rows))
'''


def one_turn(tree: Path) -> list[dict]:
    """Serve `tree` once and measure every level."""
    (tree / "bench" / "results" / "ab-trees-logs").mkdir(parents=True, exist_ok=True)
    code = f"LEVELS = {LEVELS!r}\n" + _ONE_TURN
    done = subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", code], cwd=tree, capture_output=True,
                          text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{tree}: no result\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main(argv: list[str] | None = None) -> dict:
    """Alternate the trees, print each tree's runs per level, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs=2, type=Path)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    runs: dict[str, list[dict]] = {str(t): [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            runs[str(tree)] += one_turn(tree.resolve())
    for tree, rows in runs.items():
        for c in LEVELS:
            sel = [r for r in rows if r["concurrency"] == c]
            print(f"{tree:28} c={c:<3} req/s {[round(r['requests_per_s']) for r in sel]} "
                  f"p50 {[round(r['p50_ms'], 1) for r in sel]} cpu ms/req {[round(r['cpu_ms'], 2) for r in sel]}")
    RESULTS.mkdir(exist_ok=True)
    result = {"command": "python -m bench.ab_trees " + " ".join(argv or sys.argv[1:]), "runs": runs}
    (RESULTS / "ab-trees.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
