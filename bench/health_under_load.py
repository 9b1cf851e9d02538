"""Health under load: does a busy model replica on a slow device survive Serve's health checks?

Sustained load of long passages on the full-size checkpoint (CPU), with the deployment's default
health checks (`health_check_period_s` 10, `health_check_timeout_s` 30): each coalesced batch holds
~`max_queue_tokens` tokens and takes longer than that timeout here. Reports replica restarts (the replica
actors and worker pids before, during and after), batch times, what `serve.status()` showed, and how
long the health probe took to answer while batches ran. The figures of a run go to docs/reliability.md.

    .venv/bin/python -m serve_app.tools.tiny_model .models/full --full-size
    .venv/bin/python -m bench.health_under_load --model .models/full --minutes 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
APP = "health-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (the full-size one)")
    parser.add_argument("--minutes", type=float, default=5, help="how long the load runs")
    parser.add_argument("--dtype", default="auto", help="auto: bf16 on a CPU with native bf16, else fp32")
    parser.add_argument("--num-threads", type=int, default=2, help="torch threads of the replica")
    parser.add_argument("--passage-tokens", type=int, default=2048, help="tokens per passage (at most)")
    parser.add_argument("--texts-per-request", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4, help="closed-loop callers (2 fill both batches)")
    parser.add_argument("--out", default=str(RESULTS / "health-under-load.json"))
    args = parser.parse_args()
    figures = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def run(args: argparse.Namespace) -> dict:
    """Start a local Ray and the model deployment, load it for `args.minutes`, watch it, report."""
    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from bench.workload import make_workload
    from serve_app.app import build_model_deployment, model_deployment_options
    from serve_app.serving.config import AppArgs
    from tests.support.faults import model_replicas

    args.model = str(Path(args.model).resolve())  # the replica runs in another working directory
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    lo = max(8, args.passage_tokens * 7 // 8)
    passages = make_workload(args.clients * args.texts_per_request * 8, tokenizer, seed=1,
                             mix=(("long", 1.0, lo, args.passage_tokens),))
    app_args = AppArgs(encoder={"model": args.model, "device": "cpu", "dtype": args.dtype,
                                "num_threads": args.num_threads}, cache={"backend": "off"})
    options = model_deployment_options()
    figures: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "model": Path(args.model).name,
        "dtype": args.dtype, "minutes": args.minutes, "clients": args.clients,
        "texts_per_request": args.texts_per_request, "passage_tokens": [lo, args.passage_tokens],
        "health_check_period_s": options["health_check_period_s"],
        "health_check_timeout_s": options["health_check_timeout_s"], "user_config": options["user_config"],
    }
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        started = time.monotonic()
        model = serve.run(build_model_deployment(app_args, {"name": "EmbeddingModel"}), name=APP, route_prefix=None)
        figures["startup_s"] = round(time.monotonic() - started, 1)
        figures.update(_load(model, passages, args, lambda: model_replicas(APP)))
    finally:
        serve.shutdown()
        ray.shutdown()
    return figures


def _load(model, passages: list[str], args: argparse.Namespace, replicas) -> dict:
    """Closed-loop callers for `args.minutes`, and a watcher sampling replicas, status and the probe."""
    from ray import serve

    from serve_app.serving.schemas import EncodeRequest

    stop, outcomes, batch_ms = threading.Event(), Counter(), []
    k = args.texts_per_request

    def client(c: int) -> None:
        i = c
        while not stop.is_set():
            texts = [passages[(i * k + j) % len(passages)] for j in range(k)]
            i += args.clients
            try:
                result = model.encode.remote(EncodeRequest(texts=texts, dense=True, sparse=True)).result(timeout_s=900)
                outcomes["ok"] += 1
                batch_ms.append(result.timings.inference_ms)
            except Exception as exc:
                outcomes[type(exc).__name__] += 1

    replicas_before, first = replicas(), model.info.remote().result()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
    for thread in threads:
        thread.start()
    seen_replicas, pids, states, probe_ms = set(replicas_before), {first["pid"]}, Counter(), []
    started = time.monotonic()
    while time.monotonic() < started + args.minutes * 60:
        time.sleep(5)
        seen_replicas.update(replicas())
        deployment = serve.status().applications[APP].deployments["EmbeddingModel"]
        states[f"{getattr(deployment.status, 'value', deployment.status)}:{_states(deployment.replica_states)}"] += 1
        t0 = time.monotonic()
        try:  # the probe Serve runs, timed while the batches run
            model.check_health.remote().result(timeout_s=60)
            probe_ms.append((time.monotonic() - t0) * 1e3)
            pids.add(model.info.remote().result(timeout_s=60)["pid"])
        except Exception as exc:  # a probe that failed or waited past 60 s, or a replica gone
            outcomes[f"watcher {type(exc).__name__}"] += 1
    load_s = time.monotonic() - started
    stop.set()  # requests still in flight are not waited for: a batch may run for many minutes
    last = model.info.remote().result()
    compute = last.get("compute", {})  # the compute thread's own figures (absent before the heartbeat)
    return {
        "replica_restarts": len(seen_replicas) - len(replicas_before), "replicas_before": replicas_before,
        "replicas_seen": sorted(seen_replicas), "worker_pids": sorted(pids), "status_samples": dict(states),
        "requests": dict(outcomes), "load_s": round(load_s, 1), "last_replica_counts": last["counts"],
        "last_replica_compute": compute,
        "mean_batch_s": round(compute["busy_s"] / compute["steps"], 2) if compute.get("steps") else None,
        # A request's inference time runs from its batch leaving the queue to its result: with two batches
        # in flight it includes the wait for the other one.
        "request_inference_s": _spread([ms / 1e3 for ms in batch_ms]), "probe_ms": _spread(probe_ms),
    }


def _states(replica_states: dict) -> str:
    return ",".join(f"{getattr(s, 'value', s)}={n}" for s, n in sorted(replica_states.items(), key=str) if n)


def _spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(statistics.median(values), 2), "max": round(max(values), 2),
            "min": round(min(values), 2)}


if __name__ == "__main__":
    main()
