"""Step load on the autoscaling service: offered load, throughput, p95 latency and replicas over time.

    .venv/bin/python -m bench.step_load --model .models/tiny

Deploys serve_config.yaml the way `serve run` does (the YAML through Serve's controller, so its
`autoscaling_config` blocks are what Serve applies) with these changes: the given model in fp32 (so
every answer can be checked against the encoder), the cache off (the load repeats texts), the model's
`num_cpus` 0.5 and `max_replicas` 2 (two replicas fit on 2 cores), and the delays below. Then a closed
loop of `--low` callers, a step to `--high` callers held until a second model replica has served plus
`--hold` seconds, and `--low` again until one model replica is left (or `--after` seconds). Every 200
is checked against the encoder's own vectors (`tests.support.load.Checker`).

Writes bench/results/step_load.json (the timeline, the load per second, the scaling times) and
step_load.png. Scaling times are measured from the step: a second replica started (the autoscaler's
decision), RUNNING, and serving texts; and from the drop back to `--low`: one replica left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from serve_app.serving.autoscaling import QUEUED_TOKENS_METRIC
from tests.support.load import Checker, LoadReport, closed_loop, make_requests, text_pool
from tests.support.scaling import ReplicaTexts, ReplicaWatch, alive, running

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
APP, MODEL, INGRESS = "bge-m3", "EmbeddingModel", "Ingress"


class TimedReport(LoadReport):
    """A `LoadReport` that also keeps when each answer came (seconds since `t0`) and its latency."""

    def __init__(self, t0: float):
        super().__init__("closed", 0)
        self.t0, self.answers = t0, []

    def record(self, status, latency: float) -> None:
        super().record(status, latency)
        self.answers.append((time.monotonic() - self.t0, latency, str(status)))


def service_config(model: str, port: int, delays: dict) -> dict:
    """serve_config.yaml with the changes the module docstring lists; autoscaling keeps its policy."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["encoder"].update({"model": model, "dtype": "fp32", "device": "cpu"})
    app["args"]["cache"]["backend"] = "off"
    model_deployment = next(d for d in app["deployments"] if d["name"] == MODEL)
    model_deployment["ray_actor_options"]["num_cpus"] = 0.5
    model_deployment["autoscaling_config"].update({"max_replicas": 2, **delays})
    return config


async def step(url: str, requests: list[list[str]], checker: Checker, args: argparse.Namespace) -> dict:
    """The three phases, each ended by state (or its deadline); returns the timeline and the loads."""
    t0 = time.monotonic()
    watch, serving = ReplicaWatch(APP), ReplicaTexts(APP)
    before = set(await serving.poll())
    low_report, high_report = TimedReport(t0), TimedReport(t0)
    stop_watch, stop_high, stop_all = asyncio.Event(), asyncio.Event(), asyncio.Event()
    watching = asyncio.create_task(watch.run(stop_watch))
    signal: list[tuple[float, float]] = []  # (t, queued tokens) of whichever model replica answered
    sampling = asyncio.create_task(_sample_signal(serving.handle, t0, signal, stop_watch))
    low = asyncio.create_task(closed_loop(url, requests, checker, args.low, 3600, until=stop_all, report=low_report))
    offered = [(0.0, args.low)]
    times: dict = {}
    await asyncio.sleep(args.before)
    high = asyncio.create_task(closed_loop(url, requests, checker, args.high - args.low, 3600, until=stop_high,
                                           report=high_report))
    step_at = time.monotonic()
    offered.append((round(step_at - t0, 2), args.high))
    times["started_s"] = await watch.wait(lambda s: alive(s[MODEL]) >= 2, args.max_step)
    times["running_s"] = await watch.wait(lambda s: running(s[MODEL]) >= 2, args.max_step)
    if times["running_s"] is not None:
        times["running_s"] = round(time.monotonic() - step_at, 2)
    served = await serving.wait_for_new(before, max(args.max_step - (time.monotonic() - step_at), 1))
    times["serving_s"] = None if served is None else round(time.monotonic() - step_at, 2)
    await asyncio.sleep(args.hold)
    stop_high.set()
    await high
    drop_at = time.monotonic()
    offered.append((round(drop_at - t0, 2), args.low))
    times["back_to_one_s"] = await watch.wait(lambda s: s[MODEL] == {"RUNNING": 1}, args.after)
    await asyncio.sleep(5)  # the low load on one replica again, for the plot
    stop_all.set()
    await low
    offered.append((round(time.monotonic() - t0, 2), 0))
    stop_watch.set()
    await asyncio.gather(watching, sampling)
    replicas = [(round(t + watch.started - t0, 2), s) for t, s in watch.samples]
    return {"times_from_step": times, "step_at_s": round(step_at - t0, 2), "drop_at_s": round(drop_at - t0, 2),
            "offered_callers": offered, "replicas": replicas,
            "answers": sorted(low_report.answers + high_report.answers), "queued_tokens": signal,
            "load": {"low": low_report.summary(), "high": high_report.summary()}}


async def _sample_signal(handle, t0: float, out: list, stop: asyncio.Event) -> None:
    """The autoscaling signal as the replicas report it (`record_autoscaling_stats`), 4 times a second;
    the router picks the replica, so with two each sample is one of them."""
    while not stop.is_set():
        try:
            stats = await asyncio.wait_for(handle.record_autoscaling_stats.remote(), 5)
            out.append((round(time.monotonic() - t0, 2), stats[QUEUED_TOKENS_METRIC]))
        except Exception:  # a replica stopping: the next sample asks again
            pass
        await asyncio.sleep(0.25)


def per_second(answers: list[tuple[float, float, str]], end: float, width: float = 2.0) -> list[dict]:
    """Answers per `width`-second bin: 200s per second and their p95 latency (ms)."""
    bins = []
    for start in np.arange(0, end, width):
        ok = [lat for t, lat, status in answers if start <= t < start + width and status == "200"]
        bins.append({"t": round(float(start + width / 2), 1), "ok_per_s": round(len(ok) / width, 1),
                     "p95_ms": round(float(np.percentile(ok, 95)) * 1e3, 1) if ok else None,
                     "other_statuses": sum(1 for t, _, s in answers if start <= t < start + width and s != "200")})
    return bins


def phases(answers: list[tuple[float, float, str]], result: dict) -> list[dict]:
    """200s per second and p95 latency (ms) in each phase: before the step, the step on one replica,
    the step once the second serves, after the drop."""
    serving = result["times_from_step"]["serving_s"]
    second = result["step_at_s"] + serving if serving is not None else result["drop_at_s"]
    bounds = [("before the step", 0, result["step_at_s"]), ("step, 1 replica", result["step_at_s"], second),
              ("step, 2 replicas serving", second, result["drop_at_s"]),
              ("after the drop", result["drop_at_s"], result["offered_callers"][-1][0])]
    out = []
    for label, start, end in bounds:
        ok = [lat for t, lat, status in answers if start <= t < end and status == "200"]
        p95 = round(float(np.percentile(ok, 95)) * 1e3, 1) if ok else None
        queued = [v for t, v in result["queued_tokens"] if start <= t < end]
        out.append({"phase": label, "seconds": round(end - start, 1),
                    "ok_per_s": round(len(ok) / max(end - start, 1e-9), 1), "p95_ms": p95,
                    "queued_tokens_per_replica_mean": round(float(np.mean(queued))) if queued else None})
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(8, 11), sharex=True)
    end = result["offered_callers"][-1][0]
    t, callers = zip(*result["offered_callers"])
    axes[0].step(t, callers, where="post")
    axes[0].set_ylabel("callers (offered)")
    bins = result["per_second"]
    axes[1].plot([b["t"] for b in bins], [b["ok_per_s"] for b in bins])
    axes[1].set_ylabel("requests/s (200)")
    axes[2].plot([b["t"] for b in bins], [b["p95_ms"] for b in bins])
    axes[2].set_ylabel("p95 latency (ms)")
    for name, style in ((MODEL, "-"), (INGRESS, "--")):
        times = [s[0] for s in result["replicas"]]
        axes[3].step(times, [running(s[1].get(name, {})) for s in result["replicas"]], style, where="post",
                     label=f"{name} running")
    axes[3].step([s[0] for s in result["replicas"]], [alive(s[1].get(MODEL, {})) for s in result["replicas"]], ":",
                 where="post", label=f"{MODEL} started")
    axes[3].set_ylabel("replicas")
    axes[3].set_ylim(0, 3)
    axes[3].legend(loc="upper right", fontsize=8)
    if result["queued_tokens"]:
        t, queued = zip(*result["queued_tokens"])
        axes[4].plot(t, queued, ".", ms=2, label="a replica's queued tokens (sampled)")
    axes[4].axhline(result["target_queued_tokens"], color="red", lw=0.8, label="target per replica")
    axes[4].set_yscale("symlog", linthresh=100)
    axes[4].set_ylim(bottom=0)
    axes[4].set_ylabel("queued tokens")
    axes[4].legend(loc="upper right", fontsize=8)
    axes[4].set_xlabel("seconds")
    marks = result["times_from_step"]
    for ax in axes:
        ax.axvline(result["step_at_s"], color="grey", lw=0.8)
        ax.axvline(result["drop_at_s"], color="grey", lw=0.8)
        if marks.get("serving_s") is not None:
            ax.axvline(result["step_at_s"] + marks["serving_s"], color="green", lw=0.8, ls="--")
        ax.set_xlim(0, end)
    axes[0].set_title(f"step {result['low']} -> {result['high']} callers: second model replica serving "
                      f"{marks.get('serving_s')} s after the step", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--low", type=int, default=2, help="callers before and after the step")
    parser.add_argument("--high", type=int, default=128, help="callers during the step")
    parser.add_argument("--before", type=float, default=20, help="seconds of low load before the step")
    parser.add_argument("--hold", type=float, default=20, help="seconds of the step after the second replica served")
    parser.add_argument("--max-step", type=float, default=180, help="deadline for the second replica to serve")
    parser.add_argument("--after", type=float, default=180, help="deadline for one replica to be left")
    parser.add_argument("--look-back-s", type=float, default=11,
                        help="autoscaling_config.look_back_period_s (Serve warns below the 10 s report interval)")
    parser.add_argument("--upscale-delay-s", type=float, default=5, help="Serve's default: 30")
    parser.add_argument("--downscale-delay-s", type=float, default=15, help="Serve's default: 600")
    parser.add_argument("--name", default="step_load")
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve_app.core.config import EncoderConfig
    from serve_app.core.encoder import Encoder
    from tests.conftest import free_port

    pool = text_pool(2000)
    checker = Checker(Encoder(EncoderConfig(model=args.model, device="cpu", dtype="fp32")), pool)
    requests = make_requests(pool, 5000, max_texts=8)
    delays = {"look_back_period_s": args.look_back_s, "upscale_delay_s": args.upscale_delay_s,
              "downscale_delay_s": args.downscale_delay_s}
    port = free_port()
    config = service_config(args.model, port, delays)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # this machine's CPUs, as `serve run` would
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        deadline = time.monotonic() + 300
        while (status := serve.status().applications.get(APP)) is None or status.status != "RUNNING":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{APP} not RUNNING after 300 s: {status}")
            time.sleep(1)
        result = asyncio.run(step(f"http://127.0.0.1:{port}", requests, checker, args))
    finally:
        serve.shutdown()
        ray.shutdown()
    push = os.environ.get("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "10 (Serve's default)")
    policy = next(d for d in config["applications"][0]["deployments"] if d["name"] == MODEL)["autoscaling_config"]
    result.update(low=args.low, high=args.high, autoscaling=delays, metric_push_interval_s=push,
                  target_queued_tokens=policy["policy"]["policy_kwargs"]["target_queued_tokens"],
                  per_second=per_second(result["answers"], result["offered_callers"][-1][0]),
                  phases=phases(result["answers"], result),
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", model=Path(args.model).name,
                  command="python -m bench.step_load " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                  for k, v in vars(args).items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    del result["answers"]  # per_second holds what they show
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{args.name}.png")
    print(json.dumps({k: result[k] for k in ("times_from_step", "phases", "load", "autoscaling", "machine")}, indent=1))


if __name__ == "__main__":
    main()
