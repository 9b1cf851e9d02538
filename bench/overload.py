"""Overload and fault run: floods the service on loopback, checks every answer, reports the figures.

The CLI for the long run recorded in docs/reliability.md:

    .venv/bin/python -m bench.overload --model .models/tiny --duration 120

The load driver and its checks live in `tests.support.load` (texts, requests, `Checker`, open and
closed loops) and `tests.support.faults` (killing a model replica under load), which the tests share.
Every 200 counts as correct only when each returned dense vector equals the encoder's own vector for
that text, in request order; a request without an answer within the client timeout counts as hung.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
from pathlib import Path

from tests.support.faults import kill_under_load, model_replicas
from tests.support.load import Checker, closed_loop, make_requests, open_loop, text_pool

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--duration", type=float, default=120, help="seconds of overload")
    parser.add_argument("--overload", type=float, default=4.0, help="offered load as a multiple of capacity")
    parser.add_argument("--fault-seconds", type=float, default=60,
                        help="deadline after each replica kill for health to recover and the replacement to serve")
    parser.add_argument("--out", default=str(RESULTS / "reliability.json"))
    args = parser.parse_args()
    figures = long_run(args.model, args.duration, args.overload, args.fault_seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def long_run(model: str, duration: float, overload: float, fault_seconds: float) -> dict:
    """Start Ray and the app on loopback; measure capacity, overload it, check recovery, kill replicas."""
    import os

    import ray
    from ray import serve

    from serve_app.app import build_app, build_service
    from serve_app.core.config import EncoderConfig
    from serve_app.core.encoder import Encoder
    from tests.conftest import free_port

    encoder_args = {"model": model, "device": "cpu", "dtype": "fp32", "max_length": 128}
    limits = {"max_texts_per_request": 8, "max_pending_requests": 64, "request_timeout_s": 10}
    pool = text_pool(2000)
    checker = Checker(Encoder(EncoderConfig(**encoder_args)), pool)
    requests = make_requests(pool, 5000, max_texts=8, oversize_every=20)
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU", "limits": limits,
                     "encoder": {**encoder_args, "model": Path(model).name}}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        app_args = {"encoder": encoder_args, "limits": limits, "cache": {"backend": "off"}}  # load the model path
        serve.run(build_app(app_args), name="bge-m3", route_prefix="/")
        before = model_replicas()
        capacity = asyncio.run(closed_loop(url, requests, checker, 16, 10))
        rate = capacity.ok_per_s * overload
        flood = asyncio.run(open_loop(url, requests, checker, rate, duration))
        after = asyncio.run(closed_loop(url, requests, checker, 4, 5))
        figures.update(capacity=capacity.summary(), offered_per_s=round(rate, 1), overload=flood.summary(),
                       after_overload=after.summary(), restarted_by_overload=model_replicas() != before)
        figures["kill_single_replica"] = _fault(url, requests, checker, fault_seconds)
        serve.run(build_service(app_args, model_options={"num_replicas": 2}), name="bge-m3", route_prefix="/")
        figures["kill_one_of_two_replicas"] = _fault(url, requests, checker, fault_seconds)
    finally:
        serve.shutdown()
        ray.shutdown()
    return figures


def _fault(url: str, requests: list[list[str]], checker: Checker, deadline_s: float) -> dict:
    result = asyncio.run(kill_under_load(url, requests, checker, 8, deadline_s=deadline_s))
    return {**result, "load": result["load"].summary()}


if __name__ == "__main__":
    main()
