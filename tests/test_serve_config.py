"""`serve run serve_config.yaml` works as Ray users expect, and every preset in configs/ is valid."""

from __future__ import annotations

import copy
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from serve_app.app import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    build_model_deployment,
    build_service,
    ingress_deployment_options,
    model_deployment_options,
)
from serve_app.core.config import EncoderConfig
from serve_app.offline.__main__ import parse_args
from serve_app.serving.autoscaling import POLICY_PATH, QueuedTokensPolicy
from serve_app.serving.config import AppArgs, BatchingConfig, ModelAutoscaling
from serve_app.serving.deployments import ingress_autoscaling, model_autoscaling
from tests.conftest import free_port
from tests.support.grpc_clients import compile_clients
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "serve_config.yaml"
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
CONFIGS = [REFERENCE, *PRESETS]
DEFAULT_OPTIONS = {MODEL_DEPLOYMENT: model_deployment_options(), INGRESS_DEPLOYMENT: ingress_deployment_options()}
AUTOSCALING = {MODEL_DEPLOYMENT: model_autoscaling(), INGRESS_DEPLOYMENT: ingress_autoscaling()}


def _app_of(config: dict) -> dict:
    [app] = config["applications"]
    return app


def _app(path: Path) -> dict:
    return _app_of(yaml.safe_load(path.read_text()))


def _deployments(app: dict) -> dict[str, dict]:
    """Each deployment's options as Serve applies them: the builder's defaults, then the YAML's."""
    return {name: {**options, **next((d for d in app.get("deployments", []) if d["name"] == name), {})}
            for name, options in DEFAULT_OPTIONS.items()}


def _leaves(tree: dict, prefix: str = "") -> dict:
    """Nested dicts flattened to dotted keys."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path, monkeypatch):
    monkeypatch.delenv("BGE_M3_MODEL", raising=False)
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert [d.name for app in config.applications for d in app.deployments] <= list(DEFAULT_OPTIONS)
    app = _app(path)
    assert app["import_path"] == "serve_app.app:build_app"
    args = AppArgs.model_validate(app.get("args") or {})
    for name, options in _deployments(app).items():
        if name == MODEL_DEPLOYMENT:
            BatchingConfig.model_validate(options["user_config"]).check_holds(args.encoder.max_length)
            assert options["max_ongoing_requests"] >= 64
        # Bounded queues everywhere; past them 429 with Retry-After, not 503 or a wait.
        assert options["max_queued_requests"] > 0
        assert options["backpressure_config"]["status_code"] == 429 and options["backpressure_config"]["retry_after_s"]
    if path == REFERENCE:  # the shipped default serves loopback only
        assert config.http_options.host == "127.0.0.1"
    # Serve's proxy cuts a request with its own (non-JSON) answer: it must outlast both of the ingress's deadlines,
    # a bulk request's the longer, so the client gets the ingress's 504 instead.
    assert config.http_options.request_timeout_s > max(args.limits.request_timeout_s,
                                                       args.limits.bulk_request_timeout_s)


def test_serve_config_yaml_lists_every_setting_at_its_typed_default(monkeypatch):
    """serve_config.yaml is the reference: every `args` and `user_config` field, each at the default the
    typed config owns, the deployment options the builder sets by default, and the autoscaling blocks of
    the builders that make them; so none can drift."""
    monkeypatch.delenv("BGE_M3_MODEL", raising=False)
    app = _app(REFERENCE)
    assert _leaves(app["args"]) == _leaves(AppArgs().model_dump())
    model = next(d for d in app["deployments"] if d["name"] == MODEL_DEPLOYMENT)
    assert model["user_config"] == BatchingConfig().model_dump()
    for deployment in app["deployments"]:
        defaults = {**DEFAULT_OPTIONS[deployment["name"]], "autoscaling_config": AUTOSCALING[deployment["name"]]}
        shared = set(deployment) & set(defaults)
        assert "autoscaling_config" in shared, deployment["name"]
        assert {k: deployment[k] for k in shared} == {k: defaults[k] for k in shared}, deployment["name"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_set_only_what_differs_from_the_defaults(path):
    """A preset restating a default would silently keep an old value when the default changes. Serve
    replaces `autoscaling_config` whole, not key by key, so a preset's block counts as one value."""
    app = _app(path)
    defaults = _leaves(AppArgs().model_dump())
    restated = {k: v for k, v in _leaves(app.get("args") or {}).items() if defaults.get(k, object()) == v}
    for deployment in app.get("deployments", []):
        name, default = deployment["name"], DEFAULT_OPTIONS[deployment["name"]]
        options = _leaves({k: v for k, v in default.items() if k != "autoscaling_config"})
        if "user_config" in deployment:
            options.update(_leaves({"user_config": BatchingConfig().model_dump()}))
        restated.update({f"{name}.{k}": v for k, v in _leaves(deployment).items()
                         if k != "name" and not k.startswith("autoscaling_config.") and options.get(k, object()) == v})
        if deployment.get("autoscaling_config") == AUTOSCALING[name]:
            restated[f"{name}.autoscaling_config"] = deployment["autoscaling_config"]
    assert not restated


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_autoscaling_block_scales_the_model_on_queued_tokens_and_the_ingress_on_http_requests(path):
    """The model's Serve-side ongoing requests are the ingress's coalesced calls (a few per ingress
    replica): a config that autoscales it must use the queued-tokens policy with a valid target, never a
    `target_ongoing_requests` (which that policy ignores). The ingress counts HTTP requests, with a
    target it reaches before it sheds load (`limits.max_pending_requests`), stated in the config:
    Serve's default (2) would add a replica for two requests. The reference autoscales both; a preset
    without a block runs Serve's default, one replica."""
    app = _app(path)
    blocks = {d["name"]: d["autoscaling_config"] for d in app.get("deployments", []) if "autoscaling_config" in d}
    if path == REFERENCE:
        assert set(blocks) == {MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT}
    assert MODEL_DEPLOYMENT in blocks, "every shipped config autoscales the model"
    model = blocks[MODEL_DEPLOYMENT]
    assert model["policy"]["policy_function"] == POLICY_PATH and "target_ongoing_requests" not in model, model
    target = ModelAutoscaling.model_validate(model["policy"]["policy_kwargs"]).target_queued_tokens
    QueuedTokensPolicy(**model["policy"]["policy_kwargs"])  # what Serve's controller will instantiate
    assert target >= 64, "a replica's target must be more than a request's tokens"
    if INGRESS_DEPLOYMENT in blocks:
        max_pending = AppArgs.model_validate(app.get("args") or {}).limits.max_pending_requests
        assert 1 < blocks[INGRESS_DEPLOYMENT]["target_ongoing_requests"] < max_pending, blocks[INGRESS_DEPLOYMENT]
    for options in blocks.values():
        AutoscalingConfig.model_validate(options)


def test_the_builders_set_no_replica_count_so_a_config_decides_it():
    """An option set in code cannot be removed by a Serve config, and an `autoscaling_config` set there would
    win over a config's `num_replicas`: the builders set neither, so what a config says is what runs."""
    for options in DEFAULT_OPTIONS.values():
        assert not {"num_replicas", "autoscaling_config"} & set(options)
    model = build_model_deployment(AppArgs(), {"num_replicas": 2})._bound_deployment
    assert model.num_replicas == 2 and model._deployment_config.autoscaling_config is None


def test_a_config_setting_both_num_replicas_and_autoscaling_is_refused_with_serves_own_message():
    """Nothing is resolved silently: Serve refuses the pair, in a YAML config and from Python alike."""
    config = yaml.safe_load(REFERENCE.read_text())
    next(d for d in _app_of(config)["deployments"] if d["name"] == MODEL_DEPLOYMENT)["num_replicas"] = 2
    with pytest.raises(ValueError, match="num_replicas is not allowed when autoscaling_config is provided"):
        ServeDeploySchema.model_validate(config)
    with pytest.raises(ValueError, match="num_replicas is not allowed when autoscaling_config is provided"):
        build_service({}, {"num_replicas": 2, "autoscaling_config": model_autoscaling()})


def test_old_token_budget_name_fails_naming_the_new_one():
    """`max_batch_tokens` meant two budgets; a config still using it is refused with the new names."""
    with pytest.raises(ValueError, match="max_forward_tokens.*max_queue_tokens"):
        EncoderConfig(max_batch_tokens=4096)
    with pytest.raises(ValueError, match="max_forward_tokens"):
        AppArgs.model_validate({"encoder": {"max_batch_tokens": 4096}})
    with pytest.raises(ValueError, match="max_queue_tokens.*max_forward_tokens"):
        BatchingConfig.model_validate({"max_batch_tokens": 8192})
    with pytest.raises(SystemExit):
        parse_args(["--input", "in", "--output", "out", "--max-batch-tokens", "4096"])


def test_offline_cli_flags_fall_back_to_the_typed_configs():
    """Each flag is a field of OfflineJob or EncoderConfig, unset by default: the config's default applies
    (written only there), and every job field has a flag (the cache: `--cache-redis-url`)."""
    from serve_app.core.cache import CacheConfig
    from serve_app.offline import __main__ as cli
    from serve_app.offline.job import OfflineJob

    assert set(cli.JOB_FLAGS) == set(OfflineJob.model_fields) - {"input", "output", "encoder", "cache"}
    assert OfflineJob(input="in", output="out").cache is None  # no cache
    cached = parse_args(["--input", "in", "--output", "out", "--cache-redis-url", "redis://10.0.0.1:6379/2"])
    assert cached.cache == CacheConfig(backend="redis", redis_url="redis://10.0.0.1:6379/2")
    assert set(cli.ENCODER_FLAGS) <= set(EncoderConfig.model_fields)
    assert parse_args(["--input", "in", "--output", "out"]) == OfflineJob(input="in", output="out")
    job = parse_args(["--input", "in", "--output", "out", "--max-forward-tokens", "4096", "--colbert"])
    assert job.encoder == EncoderConfig(max_forward_tokens=4096) and job.colbert


def test_queue_budget_below_max_length_is_refused_at_build_time():
    """Known when the app is built from Python (defaults or `model_options`): refused there, naming both."""
    args = {"encoder": {"max_length": 512}}
    build_service(args, {"user_config": {"max_queue_tokens": 512}})  # exactly one text: fine
    with pytest.raises(ValueError, match=r"max_queue_tokens \(511\).*max_length \(512\)"):
        build_service(args, {"user_config": {"max_queue_tokens": 511}})


def test_model_env_var_overrides_args(monkeypatch):
    monkeypatch.setenv("BGE_M3_MODEL", "/models/elsewhere")
    assert AppArgs.model_validate({"encoder": {"model": "BAAI/bge-m3"}}).encoder.model == "/models/elsewhere"
    monkeypatch.delenv("BGE_M3_MODEL")
    assert AppArgs.model_validate({}).encoder.model == "BAAI/bge-m3"


def _default_sigint() -> None:
    """In the child: Ctrl-C acts again. A test run started in the background (`pytest &` in a shell) ignores
    SIGINT and its children inherit that, so `serve run` would ignore the test's Ctrl-C, be killed after a
    minute instead of shutting its Ray down, and leave that Ray running."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServeRun:
    """`serve run CONFIG` in a process of its own, on a fresh local Ray (never the tests' own), as a user
    starts the service: Ctrl-C stops it."""

    def __init__(self, config: dict, tmp_path: Path, model_dir: str):
        self.port = free_port()
        config["http_options"]["port"] = self.port  # the shipped files say 8000 and 9000; CI may have them taken
        config["grpc_options"]["port"] = self.grpc_port = free_port()
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "RAY_ADDRESS": "local", "BGE_M3_MODEL": model_dir}
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(path)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_default_sigint)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"

    def wait_healthy(self, deadline_s: float = 120) -> None:
        """Until `/health` says 200; fails with the process's output if it exited first."""
        status = None

        def healthy() -> bool:
            nonlocal status
            assert self.proc.poll() is None, self.proc.stdout.read1().decode(errors="replace")
            try:
                status = httpx.get(f"{self.url}/health", timeout=2).status_code
            except httpx.TransportError:
                return False
            return status == 200

        assert wait_until(healthy, deadline_s, interval=1), status

    def dashboard_url(self) -> str:
        """This run's Ray dashboard: 8265 unless another Ray on the machine holds that port, when Ray takes the
        next free one (so a test never reads another Ray's dashboard). Its session's log names the address."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            cmdline = child.cmdline()
            if any(arg.endswith("dashboard/dashboard.py") for arg in cmdline):
                session = next(arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--session-dir="))
                log = (Path(session) / "logs" / "dashboard.log").read_text()
                return "http://" + re.search(r"Dashboard head http address: (\S+)", log).group(1)
        raise AssertionError("no Ray dashboard under this `serve run`")

    def stop(self) -> None:
        _stop(self.proc)


def _dashboard_replica_states(run: ServeRun, app: str) -> dict[str, dict[str, int]]:
    """`{deployment: {state: replicas}}` of `app`, from the Serve API of `run`'s own Ray dashboard, with the
    token Ray 2.60 asks for (without it the API answers 401)."""
    token = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token"], capture_output=True,
                           text=True, check=True).stdout.strip()
    response = httpx.get(f"{run.dashboard_url()}/api/serve/applications/", timeout=10,
                         headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    deployments = response.json()["applications"][app]["deployments"]
    states: dict[str, dict[str, int]] = {}
    for name, deployment in deployments.items():
        for replica in deployment["replicas"]:
            states.setdefault(name, {}).setdefault(replica["state"], 0)
            states[name][replica["state"]] += 1
    return states


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """`serve run` of serve_config.yaml as shipped (the model path from `BGE_M3_MODEL`), with a second
    application beside it: the same one with `num_replicas: 2` under each `deployments:` entry in place of its
    `autoscaling_config`, as Ray's docs fix a replica count (at `/fixed`, its replicas on a tenth of a CPU so
    that both apps fit a 2-CPU machine). One process and one Ray for both: each costs ~25 s to start and stop."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    fixed = copy.deepcopy(config["applications"][0])
    fixed.update(name="fixed", route_prefix="/fixed")
    for deployment in fixed["deployments"]:
        del deployment["autoscaling_config"]
        deployment["num_replicas"] = 2
        deployment["ray_actor_options"]["num_cpus"] = 0.1
    config["applications"].append(fixed)
    run = ServeRun(config, tmp_path_factory.mktemp("serve-run"), tiny_model_dir)
    try:
        run.wait_healthy()
        yield run
    finally:
        run.stop()


def test_serve_run_serve_config_yaml(served, tiny_model_dir):
    body = httpx.post(f"{served.url}/v1/embeddings", json={"input": "hello"}, timeout=30).json()
    assert len(body["data"][0]["embedding"]) == 64
    assert httpx.get(f"{served.url}/info").json()["model"] == tiny_model_dir
    assert wait_until(lambda: _dashboard_replica_states(served, "bge-m3") == {MODEL_DEPLOYMENT: {"RUNNING": 1},
                                                                     INGRESS_DEPLOYMENT: {"RUNNING": 1}}, 60)


def test_serve_run_serve_config_yaml_answers_a_tei_grpc_client_as_its_http_routes(served, tmp_path):
    """HTTP and gRPC from one `serve run`: a client compiled from TEI's `tei.proto` gets /embed's vector and
    /tokenize's ids. (Two applications run here: the call names one, as a client of several must.)"""
    clients = compile_clients(tmp_path)
    app = (("application", "bge-m3"),)
    tei, stubs = clients["tei_pb2"], clients["tei_pb2_grpc"]
    with grpc.insecure_channel(served.grpc_target) as channel:
        assert grpc.channel_ready_future(channel).result(timeout=30) is None
        dense = stubs.EmbedStub(channel).Embed(tei.EmbedRequest(inputs="hello over grpc"), metadata=app,
                                                  timeout=30)
        tokens = stubs.TokenizeStub(channel).Tokenize(tei.EncodeRequest(inputs="hello over grpc",
                                                                        add_special_tokens=True),
                                                    metadata=app, timeout=30)
    expected = httpx.post(f"{served.url}/embed", json={"inputs": "hello over grpc"}, timeout=30).json()[0]
    np.testing.assert_allclose(dense.embeddings, expected, atol=1e-5)
    assert [t.id for t in tokens.tokens] == [t["id"] for t in httpx.post(
        f"{served.url}/tokenize", json={"inputs": "hello over grpc"}, timeout=30).json()[0]]


def test_serve_run_of_a_config_with_a_fixed_num_replicas_starts_that_many(served):
    """Two replicas of each deployment, as the Ray dashboard's Serve API shows them, and both model replicas
    answer. (Serve used to let the `autoscaling_config` the builders set in code win: one replica each.)"""
    expected = {MODEL_DEPLOYMENT: {"RUNNING": 2}, INGRESS_DEPLOYMENT: {"RUNNING": 2}}
    states: dict = {}

    def two_of_each() -> bool:
        nonlocal states
        states = _dashboard_replica_states(served, "fixed")
        return states == expected

    assert wait_until(two_of_each, 60), states
    pids: set[int] = set()  # the model replica answering each /info: calls are spread over both

    def both_answer() -> bool:
        pids.add(httpx.get(f"{served.url}/fixed/info", timeout=10).json()["pid"])
        return len(pids) == 2

    assert wait_until(both_answer, 30, interval=0.05), pids


def _needs_gpu(path: Path) -> bool:
    config = yaml.safe_load(path.read_text())
    return any(d.get("ray_actor_options", {}).get("num_gpus", 0) for app in config["applications"]
               for d in app.get("deployments", []))


@pytest.mark.parametrize("path", [p for p in PRESETS if not _needs_gpu(p)], ids=lambda p: p.name)
def test_every_cpu_preset_starts_with_serve_run_on_this_host_and_answers(path, tiny_model_dir, tmp_path):
    """On the CI machine (2 cores): `configs/cpu.yaml` used to reserve 2 CPUs for its model replica, so its
    ingress (0.5) waited forever for room and `/health` never answered."""
    run = ServeRun(yaml.safe_load(path.read_text()), tmp_path, tiny_model_dir)
    try:
        run.wait_healthy(deadline_s=150)
        body = httpx.post(f"{run.url}/v1/embeddings", json={"input": "a preset answers"}, timeout=60).json()
    finally:
        run.stop()
    assert len(body["data"][0]["embedding"]) == 64


SMALLEST_HOST = re.compile(r"^# Smallest host: (\d+) CPUs(?:, (\d+) GPUs?)?", re.MULTILINE)


def _reserved_at_start(app: dict) -> tuple[float, float]:
    """CPUs and GPUs the app's deployments reserve at their first replica count (`num_replicas`, or the
    autoscaling minimum), with the builder's defaults under the YAML's options."""
    cpus = gpus = 0.0
    for options in _deployments(app).values():
        replicas = options.get("num_replicas") or (options.get("autoscaling_config") or {}).get("min_replicas", 1)
        actor = options.get("ray_actor_options") or {}
        cpus += replicas * actor.get("num_cpus", 1)
        gpus += replicas * actor.get("num_gpus", 0)
    return cpus, gpus


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_each_preset_names_the_smallest_host_it_starts_on(path):
    """A preset whose replicas reserve more than its host has never starts, and Serve only says so in its
    controller's log: each preset names the smallest host in its first lines, and what it reserves fits that
    host and would not fit one CPU (or GPU) fewer."""
    named = SMALLEST_HOST.search(path.read_text())
    assert named, f"{path.name} does not name its smallest host ('# Smallest host: N CPUs[, M GPUs].')"
    host_cpus, host_gpus = int(named.group(1)), int(named.group(2) or 0)
    cpus, gpus = _reserved_at_start(_app(path))
    assert host_cpus - 1 < cpus <= host_cpus, (cpus, host_cpus)
    assert math.ceil(gpus) == host_gpus, (gpus, host_gpus)


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops `serve run` (it then shuts Serve and its Ray down); killed, and the test failed,
    if that hangs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("serve run did not stop within 60 s of Ctrl-C") from None
