"""Shared fixtures: the small BGE-M3-shaped checkpoint, built once per test session."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from serve_app.tools.tiny_model import build_checkpoint
from tests.support.waiting import wait_until


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A complete small checkpoint directory (hidden 64, 2 layers), loaded like `BAAI/bge-m3`."""
    return str(build_checkpoint(tmp_path_factory.mktemp("bge-m3-tiny"), hidden=64, layers=2))


TINY_MAX_LENGTH = 64  # short enough that a test's long text is cut or chunked, long enough for its short ones


@pytest.fixture(scope="session")
def encoder_config(tiny_model_dir):
    """The encoder settings every test uses: the small checkpoint, on the CPU, in fp32 (so outputs compare
    exactly across processes and batches), `TINY_MAX_LENGTH` tokens. A module that needs another setting
    derives it (`encoder_config.model_copy(update={...})`) rather than writing the config again."""
    from serve_app.core.config import EncoderConfig

    return EncoderConfig(model=tiny_model_dir, device="cpu", dtype="fp32", max_length=TINY_MAX_LENGTH)


@pytest.fixture(scope="session")
def direct(encoder_config):
    """The encoder of `encoder_config`, loaded once in this process: what served and offline outputs are
    compared with. Never modified by a test (one that patches an encoder loads its own)."""
    from serve_app.core.encoder import Encoder

    return Encoder(encoder_config)


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_model_dir):
    """The checkpoint's tokenizer as `transformers.AutoTokenizer` loads it: the independent reference for
    what this project's tokenizer wrapper, `/tokenize` and `/decode` answer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


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


class SharedRay:
    """The suite's local Ray with Serve, started by the first module that needs it and kept for the next
    (starting one costs ~12 s here). Each module leaves Serve empty (`clear`), so none sees another's
    apps. A module that needs a Ray of its own (several nodes, a metrics port) takes `own_ray`, which
    stops this one; the next module that needs it starts it again (such modules run last, so none does)."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.grpc_target: str | None = None  # Serve's gRPC proxy, `127.0.0.1:<port>`

    def ray(self) -> None:
        """A local Ray in this process (never one another process started on the machine)."""
        import ray

        if not ray.is_initialized():
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)

    def serve(self) -> str:
        """Serve on a free loopback port, with its gRPC proxy (this server's services) on another; the HTTP
        base URL."""
        from ray import serve

        from serve_app.grpc.servicer import SERVICER_FUNCTIONS

        self.ray()
        if self.url is None:
            port, grpc_port = free_port(), free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port},
                        grpc_options={"port": grpc_port, "grpc_servicer_functions": SERVICER_FUNCTIONS})
            self.url, self.grpc_target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        return self.url

    def clear(self) -> None:
        """Delete every Serve application, all at once (their replicas shut down side by side), and wait
        until they are gone."""
        from ray import serve

        if self.url is None:
            return
        names = list(serve.status().applications)
        for name in names:
            serve.delete(name, _blocking=False)

        def left() -> list[str]:
            return [n for n, app in serve.status().applications.items() if n in names and app.status != "NOT_STARTED"]

        assert wait_until(lambda: not left(), 60 * max(1, len(names)), interval=0.1), \
            f"Serve applications not deleted: {left()}"

    def stop(self) -> None:
        """Shut Serve and the Ray down (if started); the next user starts them again."""
        import ray
        from ray import serve

        if self.url is not None:
            serve.shutdown()
            self.url = self.grpc_target = None
        if ray.is_initialized():
            ray.shutdown()


def pytest_collection_modifyitems(config, items) -> None:
    """Modules that take `own_ray` run last, in their order: each stops the shared Ray, and the next
    module that needs it would start it again (~12 s each time)."""
    own = {item.module.__name__ for item in items if "own_ray" in getattr(item, "fixturenames", ())}
    items[:] = ([item for item in items if item.module.__name__ not in own]
                + [item for item in items if item.module.__name__ in own])


@pytest.fixture(scope="session")
def shared_ray():
    shared = SharedRay()
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture(scope="module")
def serve_instance(shared_ray):
    """The shared local Ray with Serve on a free loopback port; its base URL. Serve is left empty after
    the module."""
    url = shared_ray.serve()
    try:
        yield url
    finally:
        shared_ray.clear()


@pytest.fixture(scope="module")
def grpc_target(serve_instance, shared_ray) -> str:
    """The shared Serve's gRPC proxy, `127.0.0.1:<port>` (its HTTP proxy is `serve_instance`)."""
    assert shared_ray.grpc_target is not None
    return shared_ray.grpc_target


@pytest.fixture(scope="module")
def local_ray(shared_ray) -> None:
    """The shared local Ray, for modules that need Ray but not Serve (Ray Data)."""
    shared_ray.ray()


@pytest.fixture(scope="module")
def own_ray(shared_ray) -> None:
    """For a module that starts a Ray of its own: the shared one is stopped first (one per process)."""
    shared_ray.stop()


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

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        assert wait_until(answers, 10, interval=0.05), f"redis-server on port {port} did not answer within 10 s"

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
