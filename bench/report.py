"""Render benchmark results as the markdown tables of docs/benchmarks.md.

    python -m bench.report small full cache-repeats offline-small            # the shipped runs
    python -m bench.report --results bench/results small                     # a fresh run, elsewhere

Reads `<results>/<name>.json`: a `bench.serve_load` run (a table per target/mode/concurrency, then
ours vs. the peers), a `bench.offline_throughput` run (`offline-<name>`), a `bench.profile_replicas`
run (`profile-<name>`), a `bench.goodput` run (a row per input kind and phase), a `bench.token_ids` run
(texts vs. their token ids), a `bench.backfill` run (a row per phase, then the ratios its targets name) or
a `bench.grpc_vs_http` run (HTTP and gRPC side by side, then the ColBERT answer's forms) or a
`bench.load_memory` run (each loader's peak memory against the served weights) or a `bench.cold_start` run
(each replica start's spans, placement to first answer) or a `bench.profile_replicas` sweep (CPU per
request per process, the model replica's forward pass taken out).
`--results` defaults to docs/benchmarks/, where the runs the page cites are committed, so this prints the
page's tables as shipped; tests/bench/test_harness.py checks they match.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import model_calls

SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
LAG_NOTE_S = 0.5  # a goodput run's client this far behind its open-loop schedule is named under the table
BACKFILL_PHASES = ("online", "backfill", "both", "fifo", "dedicated")
BACKFILL_TARGETS = {"p95_ratio": 1.25, "backfill_ratio": 0.9, "busy_both": 0.9}


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


def _cell(x: float | None, fmt: str = "{:.0f}") -> str:
    """A figure, or "-" where there is none (no 429 in the phase has no 429 latency)."""
    return "-" if x is None else fmt.format(x)


def goodput_table(r: dict) -> str:
    """A `bench.goodput` run: capacity per input kind, then per input and phase the load offered, the goodput
    (tokens/s answered 200 within the deadline, in the phase window) against capacity, the answers, the
    latency of the 200s and the time to the first byte of the 429s; then the issue's targets at 4x."""
    machine = r["machine"]
    capacity = ", ".join(f"{kind} {c['tokens_per_s']:.0f} tokens/s ({c['tokens_per_request']:.0f} tokens/request)"
                         for kind, c in r["capacity"].items())
    out = [f"`{r['command']}` — {r['model']} ({r['encoder_described']['dtype']}, "
           f"torch threads: {r['encoder_described']['torch_threads']}), {machine['processor']}, "
           f"{machine['cpu_count']} CPUs; {r['duration_s']:.0f} s per phase, deadline {r['deadline_s']:.0f} s\n",
           f"raw encoder (capacity): {capacity}\n",
           "| input | load | offered tokens/s (x cap) | goodput tokens/s | **goodput / cap** | requests | 200 | 429 | "
           "504 | other | p50 / p95 of 200s, s | 429 first byte p50 / p95 / max, ms | 429s within 50 ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        shares, statuses = row["shares"], row["statuses"]
        other = row["requests"] - sum(statuses.get(s, 0) for s in ("200", "429", "504"))
        answers = [f"{n:,} ({share:.0%})" if share is not None else "0"
                   for n, share in ((statuses.get("200", 0), shares["200"]), (statuses.get("429", 0), shares["429"]),
                                    (statuses.get("504", 0), shares["504"]), (other, shares["other"]))]
        out.append(f"| {row['input']} | {row['load']} | {row['offered_tokens_per_s']:,.0f} "
                   f"({row['offered_x_capacity']:.2f}x) | {row['goodput_tokens_per_s']:,.0f} | "
                   f"**{row['goodput_x_capacity']:.2f}** | {row['requests']:,} | " + " | ".join(answers) + " | "
                   f"{_cell(row['ok_p50_s'], '{:.2f}')} / {_cell(row['ok_p95_s'], '{:.2f}')} | "
                   f"{_cell(row['r429_ttfb_p50_ms'], '{:.1f}')} / {_cell(row['r429_ttfb_p95_ms'], '{:.1f}')} / "
                   f"{_cell(row['r429_ttfb_max_ms'], '{:.1f}')} | {_cell(row['r429_within_50ms'], '{:.0%}')} |")
    targets = [f"{row['input']}: goodput {row['goodput_x_capacity']:.2f}x "
               f"({'met' if row['goodput_x_capacity'] >= 0.8 else 'missed'})"
               for row in r["rows"] if row.get("times_capacity") == 4]
    r504 = sum(row["r504"] for row in r["rows"])
    r429 = [row["r429_within_50ms"] for row in r["rows"] if row["r429_within_50ms"] is not None]
    out.append(f"\nTargets: goodput >= 0.8x capacity at 4x — {'; '.join(targets) or 'no 4x phase'}. "
               f"504s (admitted, then past the deadline): {r504}. Every 429 within 50 ms: "
               f"{'yes' if all(x == 1 for x in r429) else 'no'}"
               f"{'' if r429 else ' (no 429)'}.")
    codes = [f"{row['input']} {row['load']}: " + ", ".join(f"{code} {n:,}" for code, n in row["r429_codes"].items())
             for row in r["rows"] if row["r429_codes"]]
    if codes:  # would_miss_deadline: admission by cost; overloaded: a queue bound (docs/serving.md, "Overload")
        out.append(f"429s by code — {'; '.join(codes)}.")
    lagging = [f"{row['input']} {row['load']} {row['send_lag_p95_s']:.2f} s (max {row['send_lag_max_s']:.2f} s)"
               for row in r["rows"] if (row.get("send_lag_p95_s") or 0) > LAG_NOTE_S]
    if lagging:  # the offered column counts what was sent, but arrivals bunched behind the schedule
        out.append(f"The client fell behind its arrival schedule (send lag p95 over {LAG_NOTE_S} s): "
                   f"{'; '.join(lagging)}.")
    return "\n".join(out)


def token_ids_table(r: dict) -> str:
    """A `bench.token_ids` run: texts vs. their token ids, one input per request, medians over rounds."""
    text, ids = r["median"]["text"], r["median"]["ids"]
    processes = list(text["cpu_ms_per_request"])
    out = [f"`{r['command']}` — c={r['concurrency']}, {len(r['rounds'])} rounds of {r['seconds']:g} s per kind "
           "(medians)", "",
           "| input | requests/s | p50 ms | p95 ms | " + " | ".join(f"{p} CPU ms/request" for p in processes) + " |",
           "|---|---:|---:|---:|" + "---:|" * len(processes)]
    for kind, row in (("text", text), ("token ids", ids)):
        out.append(f"| {kind} | {row['requests_per_s']:.0f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                   + " | ".join(f"{row['cpu_ms_per_request'][p]:.2f}" for p in processes) + " |")
    out.append(f"| ids / text | {ids['requests_per_s'] / text['requests_per_s']:.2f}x | | | "
               + " | ".join(f"{ids['cpu_ms_per_request'][p] / text['cpu_ms_per_request'][p]:.2f}x"
                            if text['cpu_ms_per_request'][p] else "-" for p in processes) + " |")
    return "\n".join(out)


def backfill_ratios(phases: dict) -> dict:
    """A `bench.backfill` run: the figures its targets name, where the phases they need ran."""
    out = {}
    online = phases.get("online", {}).get("online")
    for name in ("both", "fifo"):
        if online and name in phases:
            out[f"p95_{name}_vs_alone"] = phases[name]["online"]["p95_ms"] / online["p95_ms"]
    if "backfill" in phases and "dedicated" in phases:
        alone, dedicated = phases["backfill"]["job"], phases["dedicated"]["job"]
        out["backfill_vs_dedicated"] = alone["rows_per_s"] / dedicated["rows_per_s"]
    for name in ("both", "fifo"):
        if name in phases:
            out[f"busy_{name}"] = phases[name]["busy"]
    return out


def backfill_table(result: dict) -> str:
    """A `bench.backfill` run: its phases, then the ratios against their targets."""
    phases = result["phases"]
    rows = ["| phase | online p50 ms | online p95 ms | backfill rows/s | device busy |", "|---|---|---|---|---|"]
    for name in (n for n in BACKFILL_PHASES if n in phases):
        online, job, busy = phases[name].get("online") or {}, phases[name].get("job") or {}, phases[name].get("busy")
        cells = [_fmt(online.get("p50_ms"), "{:.1f}"), _fmt(online.get("p95_ms"), "{:.1f}"),
                 _fmt(job.get("rows_per_s"), "{:.0f}"), _fmt(busy, "{:.0%}")]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    found = backfill_ratios(phases)
    targets = BACKFILL_TARGETS
    checks = [("p95_both_vs_alone", "online p95, backfill running / alone", "<=", targets["p95_ratio"]),
              ("p95_fifo_vs_alone", "the same, scheduling fifo (control)", None, None),
              ("backfill_vs_dedicated", "backfill alone / dedicated pool (rows/s)", ">=", targets["backfill_ratio"]),
              ("busy_both", "device busy, both running", ">=", targets["busy_both"]),
              ("busy_fifo", "device busy, both running, fifo (control)", None, None)]
    rows += ["", "| ratio | value | target | met |", "|---|---|---|---|"]
    for key, label, op, target in checks:
        if key in found:
            value = found[key]
            met = "" if op is None else ("yes" if (value <= target if op == "<=" else value >= target) else "no")
            rows.append(f"| {label} | {value:.2f} | {f'{op} {target}' if op else ''} | {met} |")
    return "\n".join(rows)


def grpc_table(r: dict) -> str:
    """A `bench.grpc_vs_http` run: per mode, call and concurrency, HTTP and gRPC side by side (requests/s,
    p50, server CPU per request) with gRPC / HTTP; then the ColBERT answer's bytes and time per form."""
    index = {(x["mode"], x["api"], x["texts_per_request"], x["concurrency"], x["transport"]): x for x in r["rows"]}
    out = [f"`{r['command']}` — {r['machine']}\n",
           "| mode | call | texts/req | c | HTTP req/s | gRPC req/s | **gRPC / HTTP** | HTTP p50 ms | gRPC p50 ms "
           "| HTTP CPU ms/req | gRPC CPU ms/req | errors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mode, api, k, c, transport), http in index.items():
        if transport != "http" or (mode, api, k, c, "grpc") not in index:
            continue
        grpc = index[(mode, api, k, c, "grpc")]
        call = "`/embed` vs `Embed`" if api == "tei" else "`/encode` vs `Encode`"
        out.append(f"| {mode} | {call} | {k} | {c} | {http['requests_per_s']:.0f} | {grpc['requests_per_s']:.0f} | "
                   f"**{grpc['requests_per_s'] / http['requests_per_s']:.2f}** | {http['p50_ms']:.1f} | "
                   f"{grpc['p50_ms']:.1f} | {http['server_cpu_ms_per_request']:.2f} | "
                   f"{grpc['server_cpu_ms_per_request']:.2f} | {http['errors'] + grpc['errors']} |")
    colbert = r.get("colbert")
    if colbert:
        json_ms = colbert["http-json"]["ms"]
        out += ["", f"ColBERT answer ({r['colbert_passages']} passages of 128-256 tokens, dense + ColBERT, "
                f"{r['colbert_mode']} mode; median of sequential requests, sending to numpy arrays in hand):", "",
                "| form | bytes | ms | faster than JSON |", "|---|---|---|---|"]
        for form, row in colbert.items():
            out.append(f"| {form} | {row['bytes']:,} | {row['ms']:.1f} | {json_ms / row['ms']:.2f}x |")
    return "\n".join(out)


def load_memory_table(r: dict) -> str:
    """A `bench.load_memory` run: per layout and dtype, the peak memory each loader adds against the served
    weights, and its time."""
    out = [f"`{r['command']}` — {r['machine']}\n",
           "| weights file | dtype | loader | served weights GiB | peak added GiB | **peak / weights** | load s |",
           "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        out.append(f"| {row['layout']} | {row['dtype']} | {row['loader']} | {row['weights_bytes'] / 2**30:.2f} | "
                   f"{row['added_peak_bytes'] / 2**30:.2f} | **{row['ratio']:.2f}** | {row['load_s']:.1f} |")
    return "\n".join(out)


def cpu_split_table(r: dict) -> str:
    """A `bench.profile_replicas` sweep: per level, requests/s (and, in runs that counted them, requests per
    model call) and each process's CPU ms per request, the model replica's split into its forward passes and
    the rest (of which, the compute thread's work around them)."""
    per_call = all("requests_per_model_call" in row for row in r["rows"])
    out = [f"`{r['command']}` — {r['machine']}\n",
           "| texts/request | concurrency | requests/s | " + ("requests per model call | " if per_call else "")
           + "p50 ms | HAProxy ms | ingress ms | model ms | model forward ms | **model non-forward ms** | "
           "of which compute thread |",
           "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if per_call else "")]
    for row in r["rows"]:
        cpu = row["cpu_ms_per_request"]
        out.append(f"| {row['texts_per_request']} | {row['concurrency']} | {row['requests_per_s']:.0f} | "
                   + (f"{row['requests_per_model_call']:.1f} | " if per_call else "")
                   + f"{row['p50_ms']:.1f} | {cpu.get('haproxy', 0):.2f} | {cpu['ingress']:.2f} | {cpu['model']:.2f} | "
                   f"{row['model_forward_ms']:.2f} | **{row['model_non_forward_ms']:.2f}** | "
                   f"{row['compute_rest_ms']:.2f} |")
    return "\n".join(out)


# The device's side of the projection when no GPU was measured: BGE-M3 costs ~1.1 GFLOP per token, and an
# H100 at half its dense bf16 peak (~990 TFLOP/s) does ~4.5e14 FLOP/s: ~4e5 tokens/s.
GPU_TOKENS_PER_S_ESTIMATE = 4.0e5


def gpu_projection_table(r: dict, tokens_per_query: float, device_tokens_per_s: float = GPU_TOKENS_PER_S_ESTIMATE,
                         texts_per_request: int = 1, concurrency: int = 64) -> str:
    """Requests/s per GPU that the measured host CPU allows, against the device's own rate: each model replica
    (one Python process feeding the GPU) tops out at 1000 / its non-forward CPU ms per request, each ingress
    replica at 1000 / its CPU ms, HAProxy at 1000 / its ms; the lowest of those and the device binds."""
    [row] = [x for x in r["rows"] if x["texts_per_request"] == texts_per_request and x["concurrency"] == concurrency]
    cpu = row["cpu_ms_per_request"]
    device = device_tokens_per_s / (tokens_per_query * texts_per_request)
    proxy = 1000 / cpu["haproxy"] if cpu.get("haproxy") else float("inf")
    out = [f"{texts_per_request} text(s) of ~{tokens_per_query:.0f} tokens per request, CPU per request from c="
           f"{concurrency}; the device: {device:,.0f} requests/s ({device_tokens_per_s:,.0f} tokens/s)\n",
           "| model replicas per GPU | ingress replicas | model replicas allow | ingress allows | HAProxy allows "
           "| **requests/s per GPU** | bound by |", "|---|---|---|---|---|---|---|"]
    for models in (1, 2, 4):
        for ingresses in (1, 2, 4, 8, 16):
            limits = {"model replicas": models * 1000 / row["model_non_forward_ms"],
                      "ingress": ingresses * 1000 / cpu["ingress"], "HAProxy": proxy, "device": device}
            binding = min(limits, key=lambda k: limits[k])
            out.append(f"| {models} | {ingresses} | {limits['model replicas']:,.0f} | {limits['ingress']:,.0f} | "
                       f"{proxy:,.0f} | **{limits[binding]:,.0f}** | {binding} |")
    return "\n".join(out)


def cold_start_table(r: dict) -> str:
    """A `bench.cold_start` run: each start's seconds from placement to first answer, and its spans."""
    spans = list(r["starts"][0]["spans_s"])
    out = [f"`{r['command']}` — {r['machine']}\n",
           "| start | **placement -> first answer s** | " + " | ".join(spans) + " |",
           "|---" * (len(spans) + 2) + "|"]
    for i, start in enumerate(r["starts"], 1):
        out.append(f"| {i} | **{start['placement_to_first_answer_s']:.1f}** | "
                   + " | ".join(f"{start['spans_s'][name]:.2f}" for name in spans) + " |")
    out.append(f"\nMedian: **{r['median_placement_to_first_answer_s']:.1f} s**.")
    return "\n".join(out)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else spec.format(value)


def render(name: str, results: Path = SHIPPED) -> str:
    """Every table of one run, as on the page."""
    r = load(name, results)
    if r.get("benchmark") == "goodput":
        return goodput_table(r)
    if r.get("benchmark") == "token-ids":
        return token_ids_table(r)
    if r.get("benchmark") == "backfill":
        return backfill_table(r)
    if r.get("benchmark") == "grpc-vs-http":
        return grpc_table(r)
    if r.get("benchmark") == "load-memory":
        return load_memory_table(r)
    if r.get("benchmark") == "cold-start":
        return cold_start_table(r)
    if r.get("benchmark") == "cpu-split":
        return cpu_split_table(r)
    if r.get("benchmark") == "model-calls":
        return model_calls.table(r)
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
