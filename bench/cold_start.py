"""Cold start: from a model replica's placement to its first answer, and where the time goes.

    python -m bench.cold_start --model .models/tiny --name cold-start-small [--repeats 3]

Deploys serve_config.yaml through Serve's controller, as `serve run` does, with the given model, the cache
off and the model deployment at a fixed `num_replicas: 1` (`num_cpus` 0.5, so two model replicas and the
ingress fit on 2 cores). Then, `--repeats` times: the config is deployed again with `num_replicas: 2` (the
moment of that call is t0: the controller places the new replica at once, as on a scale-up with room),
while a few callers send one-text `encode_stream` calls through a handle; the first answer that names a
replica not seen before is the new replica's first answer. The new replica's `info()["startup"]` marks
and its process's start time split the wait:

- placement -> process: Ray starting the worker process (0 if Ray reused an idle one);
- process -> our imports: the worker and Serve's replica machinery (`ray.serve`) before our package;
- our imports: `serve_app.serving.model` and what it pulls in (torch, the serving layer);
- Serve -> constructor: from our imports to `EmbeddingModel.__init__`;
- model load: `Encoder(...)` (tokenizer, transformers, weights);
- constructor rest; then ready -> first answer: Serve's `reconfigure`, health check and routing.

Then scales back to one replica. Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil
import yaml

from serve_app.serving.schemas import EncodeRequest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
APP, MODEL = "bge-m3", "EmbeddingModel"
# (name, from mark, to mark): consecutive spans from placement to the first answer.
SPANS = (("placement -> process", "placed", "process"), ("process -> our imports", "process", "import_started"),
         ("our imports", "import_started", "imported"), ("Serve -> constructor", "imported", "init_started"),
         ("model load", "init_started", "model_loaded"), ("constructor rest", "model_loaded", "ready"),
         ("ready -> first answer", "ready", "first_answer"))


def app_config(model: str) -> dict:
    """serve_config.yaml with `model`, the cache off and the model deployment fixed at one replica of 0.5 CPU."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config.pop("grpc_options", None)  # not measured here; its port may be taken by another run
    app = config["applications"][0]
    app["args"]["encoder"]["model"] = model
    app["args"]["cache"]["backend"] = "off"
    deployment = next(d for d in app["deployments"] if d["name"] == MODEL)
    deployment.pop("autoscaling_config")
    deployment.update(num_replicas=1)
    deployment["ray_actor_options"]["num_cpus"] = 0.5
    return config


def _deploy(config: dict, replicas: int) -> float:
    """Deploy `config` with `replicas` model replicas; returns the wall-clock time of the call."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    next(d for d in config["applications"][0]["deployments"] if d["name"] == MODEL)["num_replicas"] = replicas
    at = time.time()
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    return at


async def _first_answer_from_new(handle, known: set, deadline_s: float, callers: int = 2) -> tuple[str, float]:
    """Send one-text `encode_stream` calls until one is answered by a replica not in `known`; its id and the
    wall-clock time of that answer."""
    found: asyncio.Future = asyncio.get_running_loop().create_future()
    stop_at = time.monotonic() + deadline_s
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while not found.done() and time.monotonic() < stop_at:
            sent += 1
            request = EncodeRequest(texts=[f"cold start probe {'abcdefgh'[sent % 8]} call"], dense=True)
            async for update in handle.options(stream=True).encode_stream.remote([request]):
                if update.replica not in known and update.answers and not found.done():
                    found.set_result((update.replica, time.time()))
            await asyncio.sleep(0.02)

    await asyncio.gather(*(caller() for _ in range(callers)))
    if not found.done():
        raise TimeoutError(f"no new replica answered within {deadline_s}s")
    return found.result()


async def _info_of(handle, replica: str, tries: int = 200) -> dict:
    """`info()` of the replica `replica` (the router spreads the calls; asked until it answers one)."""
    for _ in range(tries):
        info = await handle.info.remote()
        if info["replica_id"] == replica:
            return info
    raise RuntimeError(f"replica {replica} never answered info()")


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def spans(marks: dict[str, float]) -> dict[str, float]:
    """`SPANS` in seconds from the marks; a process Ray started before placement counts as started at placement."""
    marks = {**marks, "process": max(marks["process"], marks["placed"])}
    return {name: round(marks[end] - marks[start], 3) for name, start, end in SPANS}


async def _one_start(config: dict, handle) -> dict:
    known = {update.replica async for update in
             handle.options(stream=True).encode_stream.remote([EncodeRequest(texts=["the replica already up"])])}
    placed = _deploy(config, 2)
    replica, answered = await _first_answer_from_new(handle, known, deadline_s=300)
    info = await _info_of(handle, replica)
    marks = {"placed": placed, "process": _process_started(info["pid"]) or placed, **info["startup"],
             "first_answer": answered}
    result = {"placement_to_first_answer_s": round(answered - placed, 3), "spans_s": spans(marks),
              "pid": info["pid"]}
    _deploy(config, 1)
    await _wait_replicas(1)
    return result


async def _wait_replicas(n: int, deadline_s: float = 120) -> None:
    from ray import serve

    stop_at = time.monotonic() + deadline_s
    while time.monotonic() < stop_at:
        app = serve.status().applications.get(APP)
        states = app.deployments[MODEL].replica_states if app and MODEL in app.deployments else {}
        if {str(getattr(s, "value", s)): k for s, k in states.items() if k} == {"RUNNING": n}:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{MODEL} did not settle at {n} replicas")


def main(argv: list[str] | None = None) -> dict:
    """Run the cold starts, print and write the result."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="cold-start-small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=8441)
    args = p.parse_args(argv)
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # this machine's CPUs, as `serve run`
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    config = app_config(os.path.abspath(args.model))
    try:
        _deploy(config, 1)
        asyncio.run(_wait_replicas(1, deadline_s=300))
        handle = serve.get_deployment_handle(MODEL, APP)

        async def run_all() -> list[dict]:
            return [await _one_start(config, handle) for _ in range(args.repeats)]

        starts = asyncio.run(run_all())
    finally:
        serve.shutdown()
        ray.shutdown()
    command = "python -m bench.cold_start " + " ".join(argv or sys.argv[1:])
    result = {"benchmark": "cold-start", "name": args.name, "model": args.model, "command": command,
              "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
              "median_placement_to_first_answer_s":
                  round(statistics.median(s["placement_to_first_answer_s"] for s in starts), 3), "starts": starts}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
