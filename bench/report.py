"""Render benchmark results as the markdown tables of docs/benchmarks.md.

    python -m bench.report small full cache-repeats offline-small            # the shipped runs
    python -m bench.report --results bench/results small                     # a fresh run, elsewhere

Reads `<results>/<name>.json`: a `bench.serve_load` run (a table per target/mode/concurrency, then
ours vs. the peers), a `bench.offline_throughput` run (`offline-<name>`) or a `bench.profile_replicas`
run (`profile-<name>`). `--results` defaults to
docs/benchmarks/, where the runs the page cites are committed, so this prints the page's tables as
shipped; tests/bench/test_harness.py checks they match.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.2f}"


def load(name: str, results: Path = SHIPPED) -> dict:
    """One results file."""
    return json.loads((Path(results) / f"{name}.json").read_text())


def table(r: dict) -> str:
    """A serve_load run as a markdown section: raw ceiling, then a row per target/mode/concurrency."""
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


def ratios(r: dict, ours: str = "ours", others: tuple[str, ...] = ("naive", "infinity")) -> str:
    """Ours divided by each other target, per texts-per-request and concurrency ("" with no peer)."""
    index = {(x["target"], x["texts_per_request"], x["concurrency"]): x["texts_per_s"] for x in r["rows"]}
    present = [o for o in others if any(k[0] == o for k in index)]
    if not present:
        return ""
    out = ["| texts/req | concurrency | " + " | ".join(f"{ours} / {o}" for o in present) + " |",
           "|---|---|" + "---|" * len(present)]
    for (target, k, c), value in sorted(index.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if target == ours:
            cells = [f"{value / index[(o, k, c)]:.2f}" if (o, k, c) in index else "-" for o in present]
            out.append(f"| {k} | {c} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def offline_table(r: dict) -> str:
    """An offline_throughput run: per corpus size and input format, the raw encoder and the CLI job, the ratio
    (raw texts/s counting its model load = 1), peak memory; then the profile's top functions, if profiled."""
    out = [f"`{r['command']}` — {r['machine']}\n",
           "| texts | input | tokens | raw: load + encode s | job (CLI, start to exit) s | raw texts/s | job texts/s "
           "| **job / raw** | job / raw encode only | peak PSS job MiB | peak PSS raw MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        raw, job = run["raw"], run["job"]
        raw_total = raw["load_s"] + raw["encode_s"]
        out.append(f"| {run['texts']:,} | {run['format']} | {run['tokens']:,} | {raw['load_s']:.1f} + "
                   f"{raw['encode_s']:.1f} | {job['wall_s']:.1f} | {_num(run['texts'] / raw_total)} | "
                   f"{_num(run['texts'] / job['wall_s'])} | **{run['ratio']:.2f}** | {run['ratio_excl_load']:.2f} | "
                   f"{job['peak_pss_mib']:,.0f} | {raw['peak_pss_mib']:,.0f} |")
    profile = r.get("profile")
    if profile:
        for proc in ("driver", "actor"):
            if proc in profile:
                top = profile[proc]["self"][:8]
                out.append(f"\nProfile, {proc} (py-spy, {profile[proc]['samples']:,} samples of active threads; "
                           "share of samples in the function itself):\n")
                out += [f"- {share:.1%} `{name}`" for share, name in top]
    return "\n".join(out)


def profile_table(r: dict) -> str:
    """A `bench.profile_replicas` run: CPU per request per process, and each replica's samples by kind."""
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in r["cpu_ms_per_request"].items())
    replicas = list(r["replicas"])
    kinds = sorted({k for rep in r["replicas"].values() for k in rep["kinds"]},
                   key=lambda k: -max(rep["kinds"].get(k, 0) for rep in r["replicas"].values()))
    out = [f"`{r['command']}` — c={r['concurrency']}: {r['requests_per_s']:.0f} requests/s; CPU ms per request: {cpu}",
           "", "| kind of work | " + " | ".join(f"{name} replica, share of samples" for name in replicas) + " |",
           "|---|" + "---|" * len(replicas)]
    out += [f"| {kind} | " + " | ".join(f"{r['replicas'][name]['kinds'].get(kind, 0):.1%}" for name in replicas) + " |"
            for kind in kinds]
    return "\n".join(out)


def render(name: str, results: Path = SHIPPED) -> str:
    """Every table of one run, as on the page."""
    r = load(name, results)
    if "runs" in r:
        return offline_table(r)
    if "replicas" in r:
        return profile_table(r)
    return "\n\n".join(part for part in (table(r), ratios(r)) if part)


def main(argv: list[str] | None = None) -> None:
    """Print the tables of each named run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", help="result files without .json, e.g. small full cache-repeats")
    p.add_argument("--results", type=Path, default=SHIPPED, help="folder of the JSON files (default: %(default)s)")
    args = p.parse_args(argv)
    print("\n\n".join(render(name, args.results) for name in args.names))


if __name__ == "__main__":
    main()
