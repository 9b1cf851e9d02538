"""Faults on the real service: a model replica killed under load, out-of-memory inside a batch, and a
model that cannot load. Nothing hangs, nothing is mixed up, the reason is visible, the service recovers.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from ray import serve

from serve_app.app import (
    MODEL_DEPLOYMENT,
    build_service,
    ingress_deployment_options,
    model_deployment_options,
)
from serve_app.core.cache import CacheConfig
from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.ingress import Ingress
from serve_app.serving.config import AppArgs
from serve_app.serving.model import EmbeddingModel
from serve_app.serving.schemas import EncodeRequest
from tests.support.faults import kill_under_load, model_replicas
from tests.support.load import Checker, make_requests, text_pool
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def config_128(encoder_config) -> EncoderConfig:
    """The shared settings with 128 tokens a text, the size the replica-kill test's load was set for (its
    pool's texts run past the shared 64 tokens)."""
    return encoder_config.model_copy(update={"max_length": 128})


def test_replica_killed_under_load(serve_instance, config_128):
    serve.run(build_service({"encoder": config_128.model_dump(), "limits": {"request_timeout_s": 30},
                             "cache": {"backend": "off"}},
                            # Serve finds a dead replica at its next health check (every second here, not
                            # 10) and then waits out its graceful shutdown (1 s, not 20: a dead replica
                            # finishes nothing) before it counts as gone and /health says ok again.
                            model_options={"num_replicas": 2, "health_check_period_s": 1,
                                           "graceful_shutdown_timeout_s": 1}),
              name="bge-m3", route_prefix="/")
    pool = text_pool(300)
    try:
        # Load runs from before the kill until health has shown the gap and the recovery and the
        # replacement has served (each waited for, 120 s at most after the kill).
        result = asyncio.run(kill_under_load(serve_instance, make_requests(pool, 2000, 8),
                                             Checker(Encoder(config_128), pool),
                                             concurrency=8, deadline_s=120))
        replicas = model_replicas()
    finally:
        serve.delete("bge-m3")
    load = result["load"].summary()
    print({**result, "load": load})
    assert result["killed"] is not None, result
    # In-flight calls on the dead replica were re-sent; none hung, none got another request's vectors.
    assert result["load"].lost == 0 and set(load["statuses"]) <= {"200", "503"}, load
    assert load["statuses"]["200"] > 0
    # /health said so while Serve replaced the replica, and is back to ok.
    assert "degraded" in result["health_after_kill"] or "503" in result["health_after_kill"], result
    assert result["recovered_s"] is not None and result["final_health"] == "ok", result
    # The replacement serves this load's requests.
    assert result["replacement_served_s"] is not None, result
    assert len(replicas) == 2 and result["killed"] not in replicas


class OutOfMemoryAboveTwoTexts(EmbeddingModel):
    """The real model deployment whose device 'runs out of memory' on any batch of more than two texts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        real_forward, self.injected = self._encoder.forward, 0

        def forward(batch):
            if batch.input_ids.shape[0] > 2:
                self.injected += 1
                raise torch.cuda.OutOfMemoryError("injected: CUDA out of memory")
            return real_forward(batch)

        self._encoder.forward = forward

    async def injected_ooms(self) -> int:
        return self.injected


@pytest.fixture(scope="module")
def fault_apps(serve_instance, encoder_config, tiny_model_dir, tmp_path_factory) -> dict:
    """The apps of the three tests below, each used by one test only, deployed together (their replicas
    start side by side; the replica-kill test's app is not among them: its replacement needs a free slot).

    "oom": `OutOfMemoryAboveTwoTexts` alone. "poison": `OutOfMemoryOnOneText` behind the ingress at
    /poison, its callers' requests waiting for each other to share one forward pass (a 0.5 s batch window
    while another batch is out, no split by length). "broken": the service on a truncated checkpoint at
    /broken, not waited for (it never runs: Serve tries to start its model replica until it gives up,
    meanwhile the others run)."""
    broken = tmp_path_factory.mktemp("broken") / "corrupt"
    shutil.copytree(tiny_model_dir, broken)
    weights = next(p for p in broken.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    # Serve gives up after the first failed start (by default after three, each a new process importing
    # torch: ~10 s apiece); the status and /health must name the cause either way.
    serve._run(build_service({"encoder": {"model": str(broken), "device": "cpu"}},
                             model_options={"max_constructor_retry_count": 1}),
               name="broken", route_prefix="/broken", _blocking=False)
    poison_options = model_deployment_options()
    poison_options["user_config"] = {**poison_options["user_config"], "batch_wait_timeout_s": 0.5}
    poison = serve.deployment(OutOfMemoryOnOneText, **poison_options).bind(
        encoder_config.model_copy(update={"min_length_ratio": 0.0}), CacheConfig(backend="off"))
    ingress = serve.deployment(serve.ingress()(Ingress), **ingress_deployment_options())
    handles = serve.run_many([
        serve.RunTarget(serve.deployment(OutOfMemoryAboveTwoTexts, **model_deployment_options()).bind(encoder_config),
                        name="oom", route_prefix=None),
        serve.RunTarget(ingress.bind(poison, AppArgs()), name="poison",
                        route_prefix="/poison")])
    return dict(zip(["oom", "poison"], handles, strict=True))


def test_out_of_memory_in_a_batch_is_split_and_retried(fault_apps, direct):
    model = fault_apps["oom"]
    texts = [" ".join(["river"] * (i + 1)) + " and 東京" for i in range(12)]  # distinct token sequences
    try:
        responses = [model.encode.remote(EncodeRequest(texts=texts[i:i + 3], dense=True, sparse=True))
                     for i in range(0, 12, 3)]  # concurrent: coalesced into batches that "do not fit"
        got = [e for r in responses for e in r.result().embeddings]
        injected = model.injected_ooms.remote().result()
    finally:
        serve.delete("oom")
    for g, e in zip(got, direct.encode(texts), strict=True):
        np.testing.assert_allclose(g.dense, e.dense, atol=1e-5)
        np.testing.assert_array_equal(g.sparse_indices, e.sparse_indices)
    assert injected > 0


POISON = "this one passage never fits in device memory"
HOLD = "a long passage that keeps the device busy"


class OutOfMemoryOnOneText(EmbeddingModel):
    """The real model deployment whose device 'runs out of memory' on any batch holding POISON, even alone, and
    is busy for a second on a batch holding HOLD (a batch forming meanwhile waits for company)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        real_forward = self._encoder.forward
        poison, hold = (t.ids for t in self._encoder.tokenize([POISON, HOLD]))
        self.shared = 0  # forward passes where POISON sat with other texts
        self.holding = threading.Event()

        def forward(batch):
            rows = [row[: max(len(poison), len(hold))].tolist() for row in batch.input_ids]
            if any(row[: len(poison)] == poison for row in rows):
                self.shared += len(rows) > 1
                raise torch.cuda.OutOfMemoryError("injected: CUDA out of memory")
            if any(row[: len(hold)] == hold for row in rows):
                self.holding.set()
                time.sleep(1.0)
            return real_forward(batch)

        self._encoder.forward = forward

    async def poison_shared_a_batch(self) -> bool:
        return self.shared > 0

    async def is_holding(self) -> bool:
        return self.holding.is_set()


def test_a_text_that_cannot_run_fails_only_its_caller(serve_instance, fault_apps, direct):
    # "poison": OutOfMemoryOnOneText behind the ingress, at /poison (`fault_apps`).
    callers = [["rivers and mountains", "東京の図書館"], [POISON], ["library museum coffee"]]
    model = serve.get_deployment_handle(MODEL_DEPLOYMENT, "poison")

    async def call_together():
        # A batch forming at an idle replica leaves at once; one forming while another is out waits for
        # company (0.5 s here): the callers arrive while HOLD's batch holds the device, so they share one.
        held = model.encode.remote(EncodeRequest(texts=[HOLD]))
        while not await model.is_holding.remote():
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"{serve_instance}/poison", timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/encode", json={"texts": t}) for t in callers))
            await held
            return responses, await client.get("/health")

    try:
        (ok_first, failed, ok_last), health = asyncio.run(call_together())
        shared = model.poison_shared_a_batch.remote().result()
    finally:
        serve.delete("poison")
    assert shared, "the callers were not coalesced into one batch: this test proved nothing"
    for response, texts in [(ok_first, callers[0]), (ok_last, callers[2])]:
        assert response.status_code == 200, response.text
        for got, exp in zip(response.json()["data"], direct.encode(texts), strict=True):
            np.testing.assert_allclose(got["dense"], exp.dense, atol=1e-5)
            assert got["sparse"]["indices"] == exp.sparse_indices.tolist()
    assert failed.status_code == 503 and failed.headers["retry-after"], failed.text
    error = failed.json()["error"]
    assert error["code"] == "out_of_memory" and "does not fit" in error["message"], error
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text


def test_model_that_cannot_load_says_why(serve_instance, fault_apps):
    # "broken": the service on a truncated checkpoint, started by `fault_apps` without waiting for it.
    def model_deployment():
        return serve.status().applications["broken"].deployments.get(MODEL_DEPLOYMENT)

    try:
        wait_until(lambda: getattr(model_deployment(), "status", None) == "DEPLOY_FAILED", 120)
        deployment = model_deployment()
        health = httpx.get(f"{serve_instance}/broken/health", timeout=30)
    finally:
        serve.delete("broken")
    # `serve status` gives up (no endless crash loop) and names the cause.
    assert deployment is not None and deployment.status == "DEPLOY_FAILED", deployment
    assert "ModelLoadError" in deployment.message and "could not load checkpoint" in deployment.message
    assert health.status_code == 503, health.text
    message = health.json()["error"]["message"]
    assert "DEPLOY_FAILED" in message and "could not load checkpoint" in message, message
