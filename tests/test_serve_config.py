"""`serve run serve_config.yaml` works as Ray users expect, and every preset in configs/ is valid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from ray import serve
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from serve_app.app import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    build_service,
    ingress_deployment_options,
    model_deployment_options,
)
from serve_app.core.config import EncoderConfig
from serve_app.offline.__main__ import parse_args
from serve_app.serving.autoscaling import POLICY_PATH, QueuedTokensPolicy
from serve_app.serving.config import AppArgs, BatchingConfig, ModelAutoscaling
from serve_app.serving.deployments import with_options
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "serve_config.yaml"
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
CONFIGS = [REFERENCE, *PRESETS]
DEFAULT_OPTIONS = {MODEL_DEPLOYMENT: model_deployment_options(), INGRESS_DEPLOYMENT: ingress_deployment_options()}


def _app(path: Path) -> dict:
    [app] = yaml.safe_load(path.read_text())["applications"]
    return app


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


def test_serve_config_yaml_lists_every_setting_at_its_typed_default(monkeypatch):
    """serve_config.yaml is the reference: every `args` and `user_config` field, each at the default the
    typed config owns, and the deployment options the builder sets by default; so none can drift."""
    monkeypatch.delenv("BGE_M3_MODEL", raising=False)
    app = _app(REFERENCE)
    assert _leaves(app["args"]) == _leaves(AppArgs().model_dump())
    model = next(d for d in app["deployments"] if d["name"] == MODEL_DEPLOYMENT)
    assert model["user_config"] == BatchingConfig().model_dump()
    for deployment in app["deployments"]:
        defaults = DEFAULT_OPTIONS[deployment["name"]]
        shared = set(deployment) & set(defaults)
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
        if deployment.get("autoscaling_config") == default.get("autoscaling_config"):
            restated[f"{name}.autoscaling_config"] = deployment["autoscaling_config"]
    assert not restated


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_autoscales_the_model_on_queued_tokens_and_the_ingress_on_http_requests(path):
    """The model's Serve-side ongoing requests are the ingress's coalesced calls (a few per ingress
    replica): every config must scale it with the queued-tokens policy and a valid target, never a
    `target_ongoing_requests` (which that policy ignores). The ingress counts HTTP requests, with a
    target it reaches before it sheds load (`limits.max_pending_requests`), stated in the config:
    Serve's default (2) would add a replica for two requests."""
    app = _app(path)
    deployments = _deployments(app)
    model = deployments[MODEL_DEPLOYMENT]["autoscaling_config"]
    assert model["policy"]["policy_function"] == POLICY_PATH and "target_ongoing_requests" not in model, model
    target = ModelAutoscaling.model_validate(model["policy"]["policy_kwargs"]).target_queued_tokens
    QueuedTokensPolicy(**model["policy"]["policy_kwargs"])  # what Serve's controller will instantiate
    assert target >= 64, "a replica's target must be more than a request's tokens"
    ingress = deployments[INGRESS_DEPLOYMENT]["autoscaling_config"]
    max_pending = AppArgs.model_validate(app.get("args") or {}).limits.max_pending_requests
    assert 1 < ingress["target_ongoing_requests"] < max_pending, ingress
    for options in (model, ingress):
        AutoscalingConfig.model_validate(options)


def test_a_fixed_replica_count_replaces_the_default_autoscaling():
    """Serve refuses `num_replicas` next to `autoscaling_config`; a caller fixing the count gets it alone."""
    options = with_options(model_deployment_options(), {"num_replicas": 2})
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options
    with pytest.raises(ValueError, match="num_replicas"):
        serve.deployment(**{**model_deployment_options(), "num_replicas": 2})
    build_service({}, {"num_replicas": 2})


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
    from serve_app.offline.pipeline import OfflineJob

    assert set(cli.JOB_FLAGS) == set(OfflineJob.model_fields) - {"input", "output", "encoder", "cache"}
    assert OfflineJob(input="in", output="out").cache.backend == "off"
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


def test_serve_run_serve_config_yaml(tiny_model_dir, tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port  # the shipped file says 8000; CI may have that taken
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    # A fresh local Ray ("local"), never the tests' own nor another one on this machine that `ray start` made.
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env["BGE_M3_MODEL"] = tiny_model_dir
    serve_bin = Path(sys.executable).parent / "serve"
    proc = subprocess.Popen([str(serve_bin), "run", str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert status == 200, proc.stdout.read1().decode(errors="replace") if proc.poll() is not None else status
        body = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "hello"}, timeout=30).json()
        assert len(body["data"][0]["embedding"]) == 64
        assert httpx.get(f"http://127.0.0.1:{port}/info").json()["model"] == tiny_model_dir
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops `serve run` (it then shuts Serve and its Ray down); kill if that hangs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
