"""Render bench/results/*.json as the markdown tables of docs/benchmarks.md.

    python -m bench.report small [full]     # prints markdown to stdout
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # the runs the doc cites are copied to docs/benchmarks/


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.2f}"


def table(name: str) -> str:
    """One results file as a markdown section: raw ceiling, then a row per target/mode/concurrency."""
    r = json.loads((RESULTS / f"{name}.json").read_text())
    raw = r["raw"]
    out = [f"`{r['command']}` — {r['n_texts']} {r['workload']} texts, {r['tokens_per_text']:.1f} tokens/text, "
           f"{r['machine']}\n"]
    if raw:
        out.append(f"raw encoder (ceiling, {raw['dtype']}): **{_num(raw['texts_per_s'])} texts/s**, "
                   f"{raw['tokens_per_s']:.0f} tokens/s, {raw['cpu_ms_per_text']:.2f} CPU ms/text, single-text encode "
                   f"p50 {raw['single_text_p50_ms']:.1f} ms\n")
    out += ["| target | texts/req | concurrency | texts/s | vs raw | tokens/s | p50 ms | p95 ms | p99 ms | errors | "
            "server CPU ms/req |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ratio = f"{row['texts_per_s'] / raw['texts_per_s']:.2f}" if raw else "-"
        out.append(f"| {row['target']} | {row['texts_per_request']} | {row['concurrency']} | "
                   f"{_num(row['texts_per_s'])} | {ratio} | {row['tokens_per_s']:.0f} | {row['p50_ms']:.1f} | "
                   f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | "
                   f"{row['server_cpu_ms_per_request']:.1f} |")
    return "\n".join(out)


def ratios(name: str, ours: str = "ours", others: tuple[str, ...] = ("naive", "infinity")) -> str:
    """Ours divided by each other target, per texts-per-request and concurrency."""
    r = json.loads((RESULTS / f"{name}.json").read_text())
    index = {(x["target"], x["texts_per_request"], x["concurrency"]): x["texts_per_s"] for x in r["rows"]}
    present = [o for o in others if any(k[0] == o for k in index)]
    out = ["| texts/req | concurrency | " + " | ".join(f"{ours} / {o}" for o in present) + " |",
           "|---|---|" + "---|" * len(present)]
    for (target, k, c), value in sorted(index.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if target == ours:
            cells = [f"{value / index[(o, k, c)]:.2f}" if (o, k, c) in index else "-" for o in present]
            out.append(f"| {k} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(arg), "\n\n", ratios(arg), "\n")
