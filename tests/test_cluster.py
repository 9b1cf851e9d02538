"""A real two-node Ray cluster on this machine: one model replica per node, HTTP through the head's proxy,
a worker node lost under load in both ways a node goes: it crashes (its connections are reset at once)
or it stops answering (power loss, partition, a frozen host: nothing is reset, calls just wait).

What it proves, on real nodes, real HTTP and the real encoder:
- losing a node costs no request: the calls that were running on its replica fail and the ingress
  re-sends them (`limits.model_retries`), new calls go to the surviving replica, and every answer is a
  200 carrying the encoder's own vectors for its texts;
- the service keeps answering with one node, and is whole again (two replicas, on two nodes, both
  serving this load) once a node with the same resources joins;
- a node that stops answering costs no request either, provided Ray declares it dead before the request
  deadline: its calls wait until then. The cluster here detects a dead node in at most ~12 s (the
  `_system_config` below); Ray's defaults take about 65 s, more than `limits.request_timeout_s` (60 s),
  and such calls are answered 504 (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from ray import serve

from serve_app.app import MODEL_DEPLOYMENT, ingress_deployment_options, model_deployment_options
from serve_app.core.encoder import Encoder
from serve_app.ingress import Ingress
from serve_app.serving.config import AppArgs
from tests.conftest import free_port
from tests.support.devices import SlowDevice
from tests.support.load import Checker, LoadReport, closed_loop, make_requests, text_pool
from tests.support.scaling import ReplicaTexts
from tests.support.waiting import wait_until

# Each node offers one model slot and each model replica takes one: two replicas land on two nodes, and
# a lost one's replacement waits for a node that offers a slot (the head has no second one).
MODEL_SLOT = "bge_m3_model_slot"
# The ingress sits on the head, beside the only HTTP proxy: this test loses model replicas, not them.
HEAD = "bge_m3_head"
WORKER_RESOURCES = {"num_cpus": 1, "resources": {MODEL_SLOT: 1}}
# Ray's node failure detection (the GCS health-checks every raylet): a node is dead after 3 checks in a
# row fail, one a second, each given 3 s: at most ~12 s, below the request deadline. (Defaults: 5 checks,
# 3 s apart, 10 s each: about 65 s.) 3 s per check leaves a busy head on this machine far from a false death.
NODE_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_timeout_ms": 3000,
                          "health_check_failure_threshold": 3}
DEADLINE_S = 120  # for every wait below: far above what each step takes, so only a real failure trips it
RETRY_LOG_LINE = "model replica lost during a call"  # gateway/dispatch.py logs it for each re-sent call
# The device's pace: a request of this load (4.5 texts of up to 128 tokens, on average) takes ~0.15 s, so
# the head's replica cannot take the whole load and calls overflow to the workers' replicas (the router
# prefers the ingress's node; the small model's own forward pass takes milliseconds). A worker is lost while
# its held device has a call in its forward pass (`_held_mid_call`): the case retries are for.
S_PER_TOKEN = 2.5e-4


def _wait(condition: Callable[[], bool]) -> bool:
    """`wait_until` with this module's deadline."""
    return wait_until(condition, DEADLINE_S, interval=0.3)


class _Load:
    """`closed_loop` in a thread of its own: Ray starts a node only from the main thread, so the test
    drives the cluster there while the clients keep sending."""

    def __init__(self, url: str, requests: list[list[str]], checker: Checker, concurrency: int):
        self.report, self._stop = LoadReport("closed", 0), threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(closed_loop(
            url, requests, checker, concurrency, 10 * DEADLINE_S, until=lambda _: self._stop.is_set(),
            report=self.report)), daemon=True)
        self._thread.start()

    @property
    def ok(self) -> int:
        return self.report.statuses["200"]

    def answers_after(self, n: int) -> Callable[[], bool]:
        """A condition: 40 more 200s than `n` (many coalesced calls, not one lucky batch)."""
        return lambda: self.ok >= n + 40

    def stop(self) -> LoadReport:
        self._stop.set()
        self._thread.join()
        return self.report


def _processes(node) -> list[psutil.Process]:
    """Every process of a `Cluster` node: its raylet and agents, and their children (the workers)."""
    roots = [psutil.Process(info.process.pid) for infos in node.all_processes.values() for info in infos
             if info.process is not None and info.process.poll() is None]
    return [child for root in roots for child in root.children(recursive=True)] + roots


def _signal(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone: nothing to signal
            process.send_signal(sig)


def _node_alive(node_id: str) -> bool:
    import ray

    return any(node["Alive"] for node in ray.nodes() if node["NodeID"] == node_id)


def _replica_on(model, node_id: str) -> str:
    """The unique id of the model replica on `node_id` (`info()` through `model`, a handle, until one answers
    from there)."""
    found: dict[str, str] = {}

    def answered_from_node() -> bool:
        info = model.info.remote().result(timeout_s=30)
        found[info["node_id"]] = info["replica_id"]
        return node_id in found

    assert _wait(answered_from_node), found
    return found[node_id]


def _held_mid_call(model, node_id: str) -> bool:
    """Hold the device of the model replica on `node_id` (calls naming a replica go to it, `serving.routing`)
    and wait until a call of the load is in its forward pass there: losing the node then catches it mid-call."""
    on_node = _replica_on(model, node_id)
    model.hold.remote(replica=on_node).result(timeout_s=30)
    return _wait(lambda: model.state.remote(replica=on_node).result(timeout_s=30)["in_forward"] == 1)


def _retries_logged(session_dir: str) -> int:
    """How many model calls the ingress re-sent: its warning lines, in the worker logs of this cluster."""
    return sum(path.read_text(errors="replace").count(RETRY_LOG_LINE)
               for path in Path(session_dir, "logs").glob("worker-*.err"))


@pytest.fixture
def cluster(own_ray) -> Iterator:
    """A head (the proxy, the ingress, one model slot) and one worker node (one model slot), with the
    driver connected. `Cluster` records its address as this machine's "current" Ray; the file is put
    back, so a plain `ray.init()` elsewhere on the machine never joins (or, after, looks for) this one."""
    import ray
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.exists() else None

    def restore_address_file() -> None:
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {HEAD: 1, MODEL_SLOT: 1}, "include_dashboard": False,
        "_system_config": NODE_FAILURE_DETECTION})
    restore_address_file()
    try:
        cluster.add_node(**WORKER_RESOURCES)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        restore_address_file()


def test_worker_node_crashed_or_frozen_under_load_loses_no_request_and_a_new_node_restores_two_replicas(
        cluster, encoder_config):
    config = encoder_config.model_copy(update={"max_length": 128})
    pool = text_pool(300)
    checker, requests = Checker(Encoder(config), pool), make_requests(pool, 2000, 8)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    # Cache off: every request reaches a model replica. The default deadline (60 s) and retries (2).
    args = AppArgs(encoder=config, cache={"backend": "off"})
    # The device is slowed to S_PER_TOKEN (`SlowDevice`). Serve finds a lost replica at its next health check
    # (every second here, not every 10 s) and counts it gone once its graceful shutdown times out (1 s, not
    # 20: a replica on a lost node finishes nothing), so the replacement is asked for, and the deployment is
    # whole again, without waiting those out.
    model = serve.deployment(SlowDevice, **{
        **model_deployment_options(), "num_replicas": 2,
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0, "resources": {MODEL_SLOT: 1}},
        "health_check_period_s": 1, "graceful_shutdown_timeout_s": 1}).bind(args.encoder, S_PER_TOKEN, args.cache)
    ingress = serve.deployment(**{**ingress_deployment_options(), "ray_actor_options": {
        "num_cpus": 0.5, "resources": {HEAD: 0.01}}})(serve.ingress()(Ingress))
    serve.run(ingress.bind(model, args), name="bge-m3", route_prefix="/")
    [first] = cluster.worker_nodes
    head = cluster.head_node.node_id
    session = cluster.head_node.get_session_dir_path()
    # What each model replica has encoded, by node (the cache is off: texts of this load).
    replicas, steps, retries = ReplicaTexts("bge-m3", key="node_id"), {}, {}

    def serving(*nodes: str) -> bool:
        """Whether a replica on each of `nodes` has encoded texts."""
        seen = replicas.poll_blocking()
        return all(seen.get(node, 0) > 0 for node in nodes)

    def model_status():
        deployment = serve.status().applications["bge-m3"].deployments[MODEL_DEPLOYMENT]
        return getattr(deployment.status, "value", deployment.status), deployment.replica_states

    load = _Load(f"http://127.0.0.1:{port}", requests, checker, concurrency=8)
    start = time.monotonic()
    try:
        # 1. Both replicas, one per node, encode this load's texts.
        placed = _wait(lambda: load.ok >= 20 and serving(head, first.node_id))
        assert placed, f"not one replica serving on each node: {replicas.seen}"

        # 2. The first worker node crashes mid-call (its device held with a call of this load in its forward
        # pass, as in step 4): the head's replica keeps the service answering.
        assert _held_mid_call(replicas.handle, first.node_id)
        ok_at_crash = load.ok
        _signal(_processes(first), signal.SIGKILL)
        cluster.remove_node(first, allow_graceful=False)  # reaps them and forgets the node
        kept_answering = _wait(load.answers_after(ok_at_crash))
        steps["crash: 40 answers"] = time.monotonic() - start
        retries["crash"] = _retries_logged(session)

        # 3. A new node joins: the lost replica's replacement lands there and serves beside the head's.
        second = cluster.add_node(**WORKER_RESOURCES)
        restored = _wait(lambda: serving(head, second.node_id) and model_status() == (
            "HEALTHY", {"RUNNING": 2}))
        steps["new node: two replicas serving"] = time.monotonic() - start

        # 4. The new node stops answering mid-call (frozen, nothing reset): its calls wait until Ray
        # declares it dead, then are re-sent; meanwhile new calls avoid the replica that does not answer.
        # The router prefers the ingress's own node, so a worker's replica gets only the overflow, and losing
        # it between two of its calls would prove nothing: the node is lost with a call held mid-forward.
        taking_calls = _held_mid_call(replicas.handle, second.node_id)
        frozen, ok_at_freeze = _processes(second), load.ok
        _signal(frozen, signal.SIGSTOP)
        try:
            declared_dead = _wait(lambda: not _node_alive(second.node_id))
            steps["freeze: node declared dead"] = time.monotonic() - start
            answered_after_death = _wait(load.answers_after(load.ok))
            steps["freeze: 40 answers after"] = time.monotonic() - start
        finally:
            _signal(frozen, signal.SIGKILL)
            cluster.remove_node(second, allow_graceful=False)
        retries["freeze"] = _retries_logged(session) - retries["crash"]
    finally:
        report = load.stop()
    summary = report.summary()
    print({"steps_s": {k: round(v, 1) for k, v in steps.items()}, "retries": retries, "load": summary,
           "replica_texts_by_node": replicas.seen})

    # One node kept the service answering, and calls running on the crashed replica were re-sent.
    assert kept_answering, summary
    assert retries["crash"] > 0, f"no call was running on the crashed replica: the crash proved nothing {retries}"
    # A new node brought the service back to two replicas, on two nodes, both serving this load.
    assert restored and taking_calls, (replicas.seen, model_status())
    # The frozen node was declared dead, its running calls re-sent, and the service answered on.
    assert declared_dead and answered_after_death and load.ok >= ok_at_freeze + 40, summary
    assert retries["freeze"] > 0, f"no call was running on the frozen replica: the freeze proved nothing {retries}"
    # And through all of it, no request got anything but a 200 with its own vectors: no 503 from
    # exhausted retries, no 504, no reset connection, no hang, no other request's vectors.
    assert report.lost == 0 and set(summary["statuses"]) == {"200"}, summary
