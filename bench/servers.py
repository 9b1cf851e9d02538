"""Start and stop the servers under test, each in its own process tree, on loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, its own threads only."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@dataclass
class Server:
    """A running server: its base URL, the route it serves embeddings on, and its process tree."""

    name: str
    url: str
    route: str
    proc: subprocess.Popen
    log: Path
    notes: dict = field(default_factory=dict)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's whole process tree (Ray's processes included)."""
        total = 0.0
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        """Ctrl-C the tree (so Ray shuts down cleanly), then kill what is left of this server's own process
        tree (its Ray and Ray's HAProxy included): never another Ray on the machine."""
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for process in tree:  # e.g. HAProxy, which can outlive a killed `serve run` and hold its ports
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(tree, timeout=30)


def commands_under(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process under `root` (a `serve run`'s tree: Ray's processes and actors,
    HAProxy); one that ended while being read is left out."""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            found.append((proc.pid, " ".join(proc.cmdline())))
        except psutil.NoSuchProcess:
            continue
    return found


def _start(name: str, cmd: list[str], port: int, route: str, env: dict, log_dir: Path, timeout: float = 300,
           notes: dict | None = None) -> Server:
    log = log_dir / f"{name}.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-3000:]}")
        try:  # /health answers 200 only once the app's routes and its model are up
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(name, url, route, proc, log, notes or {})
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{name} not healthy after {timeout}s; see {log}")


def ours_config(model: str, port: int, *, num_threads: int | None = 2, dtype: str = "auto",
                max_forward_tokens: int | None = None, max_queue_tokens: int | None = None,
                batch_wait_timeout_s: float | None = None, device: str = "auto", num_gpus: float = 0,
                replicas: int = 1, cache: bool = False, limits: dict | None = None) -> dict:
    """serve_config.yaml with the port, model, threads and budgets set; a budget left None keeps its default;
    `limits`: the ingress's `args.limits` to change (e.g. `{"model_calls_in_flight": 1}`).

    The two token budgets are separate settings (docs/serving.md, "Two token budgets"): `max_forward_tokens` is the
    encoder's padded tokens per forward pass, `max_queue_tokens` the model replica's real tokens per
    coalesced batch (its `user_config`). A sweep over "the token budget" must set both."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    # The shipped 9000 would clash with another service running on the machine (a soak beside a benchmark).
    config["grpc_options"]["port"] = port + 1
    app = config["applications"][0]
    encoder = app["args"]["encoder"]
    encoder.update({"model": model, "num_threads": num_threads, "dtype": dtype, "device": device})
    if max_forward_tokens is not None:
        encoder["max_forward_tokens"] = max_forward_tokens
    app["args"]["limits"].update({"max_texts_per_request": 1024, **(limits or {})})
    app["args"]["cache"]["backend"] = "memory" if cache else "off"
    model_deployment = app["deployments"][0]
    if batch_wait_timeout_s is not None:
        model_deployment["user_config"]["batch_wait_timeout_s"] = batch_wait_timeout_s
    if max_queue_tokens is not None:
        model_deployment["user_config"]["max_queue_tokens"] = max_queue_tokens
    model_deployment["ray_actor_options"]["num_gpus"] = num_gpus
    model_deployment["autoscaling_config"].update({"min_replicas": replicas, "max_replicas": replicas})
    return config


def start_ours(model: str, port: int, log_dir: Path, *, throughput_optimized: bool = True, **settings) -> Server:
    """This project's service: `serve run` of `ours_config(model, port, **settings)`.

    The embedding cache is off unless `cache`: the workloads repeat their texts, and a comparison with
    the raw model or a peer must measure encoding, not cache hits. Once healthy, its `/info` must show
    the budgets asked for (a benchmark row must measure the setup it names)."""
    config = ours_config(model, port, **settings)
    num_threads, cache = settings.get("num_threads", 2), settings.get("cache", False)
    name = ("ours" + ("" if throughput_optimized else "-plain-serve")
            + ("-default-threads" if num_threads is None else "") + ("-cache" if cache else ""))
    return serve_run(name, config, port, log_dir, throughput_optimized=throughput_optimized,
                     notes={"num_threads": num_threads})


def serve_run(name: str, config: dict, port: int, log_dir: Path, *, throughput_optimized: bool = True,
              notes: dict | None = None, timeout: float = 300, env: dict | None = None) -> Server:
    """`serve run` of `config` (a serve_config.yaml as a dict, its port `port`) in a Ray of its own, with
    `env` added to its environment; returns once `/health` is ok and `/info` shows the token budgets `config`
    asks for."""
    path = log_dir / f"serve_config.{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    # "local": a Ray of its own, never one already running on this machine.
    env = {**{k: v for k, v in os.environ.items() if k != "BGE_M3_MODEL"}, "RAY_ADDRESS": "local", **(env or {})}
    if throughput_optimized:  # Ray's high-throughput mode: HAProxy in front, direct ingress to replicas
        env.update({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"})
    server = _start(name, [str(Path(sys.executable).parent / "serve"), "run", str(path)], port, "/v1/embeddings",
                    env, log_dir, timeout=timeout,
                    notes={**(notes or {}), "throughput_optimized": throughput_optimized})
    try:
        server.notes["budgets"] = check_budgets(httpx.get(f"{server.url}/info", timeout=30).json(), config)
    except Exception:
        server.stop()
        raise
    return server


def check_budgets(info: dict, config: dict) -> dict:
    """The token budgets a running service's `/info` shows; raise unless they are those `config` asks for."""
    app = config["applications"][0]
    want = {"max_forward_tokens": app["args"]["encoder"]["max_forward_tokens"],
            "max_queue_tokens": app["deployments"][0]["user_config"]["max_queue_tokens"]}
    got = {"max_forward_tokens": info["max_forward_tokens"], "max_queue_tokens": info["batching"]["max_queue_tokens"]}
    if got != want:
        raise RuntimeError(f"the service runs with token budgets {got}, not the {want} asked for")
    return got


def start_naive(model: str, port: int, log_dir: Path, dtype: str = "auto") -> Server:
    """One encode call per request, no coalescing (bench/naive_server.py)."""
    return _start("naive", [sys.executable, "-m", "bench.naive_server", "--model", model, "--port", str(port),
                            "--dtype", dtype],
                  port, "/v1/embeddings", {**os.environ}, log_dir)


def start_infinity(model: str, port: int, log_dir: Path, infinity_bin: str, timeout: float = 300,
                   dtype: str = "auto") -> Server:
    """Infinity (`infinity_emb v2`, its own venv) serving the same checkpoint directory, dense only."""
    cmd = [infinity_bin, "v2", "--model-id", model, "--engine", "torch", "--device", "cpu", "--port", str(port),
           "--url-prefix", "/v1", "--log-level", "warning", "--dtype", dtype]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    return _start("infinity", cmd, port, "/v1/embeddings", env, log_dir, timeout=timeout)
