"""Shared fixtures: the small BGE-M3-shaped checkpoint, built once per test session."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from serve_app.tools.tiny_model import build_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A complete small checkpoint directory (hidden 64, 2 layers), loaded like `BAAI/bge-m3`."""
    return str(build_checkpoint(tmp_path_factory.mktemp("bge-m3-tiny"), hidden=64, layers=2))


@pytest.fixture(scope="session")
def mixed_texts() -> list[str]:
    """Short, long, over-length, Japanese, empty and duplicate texts."""
    long_en = " ".join(["the search engine returns relevant passages about rivers and mountains"] * 6)
    return [
        "what is the capital of japan",
        long_en,
        "東京の天気はどうですか。図書館は駅の近くです。",
        "",
        "what is the capital of japan",
        "mixed 東京 library museum 日本語 model",
        "a",
        long_en + " " + long_en + " " + long_en,
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def serve_instance():
    """A real local Ray with Serve on a free loopback port, one per test module; torn down after it."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free loopback port, without persistence; yields (port, restart, stop)."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed: ./install.sh installs it (Debian package redis-server)"
    port, procs = free_port(), []

    def start():
        procs.append(subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import redis

        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop():
        proc = procs.pop()
        proc.terminate()
        proc.wait(10)

    start()
    try:
        yield port, start, stop
    finally:
        while procs:
            stop()
