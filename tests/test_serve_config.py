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
from ray.serve.schema import ServeDeploySchema

from serve_app.serving_config import AppArgs, BatchingConfig
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "serve_config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path, monkeypatch):
    monkeypatch.delenv("BGE_M3_MODEL", raising=False)
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in config.applications:
        assert app.import_path == "serve_app.app:build_app"
        AppArgs.model_validate(app.args)
        for deployment in app.deployments:
            if deployment.name == "EmbeddingModel":
                BatchingConfig.model_validate(deployment.user_config)
                assert deployment.max_ongoing_requests >= 64
            # Bounded queues everywhere; past them 429 with Retry-After, not 503 or a wait.
            assert deployment.max_queued_requests > 0
            assert deployment.backpressure_config.status_code == 429 and deployment.backpressure_config.retry_after_s
    if path.name == "serve_config.yaml":  # the shipped default serves loopback only
        assert config.http_options.host == "127.0.0.1"


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
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray, not the tests'
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
