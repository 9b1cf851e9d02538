"""The model deployment: a thin Serve adapter that holds Serve's hooks and delegates.

A call's requests go through `flow` (prepared, admitted, answered; Ray-free), jobs are gathered into
batches by `coalescer` (a `BatchQueue` per lane) and run by `runner` on the one thread that owns the device;
`admission` judges cost, `health` the probe, `metrics` counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from functools import partial

import ray
from ray import serve

from .. import IMPORT_STARTED
from ..core.cache import CacheConfig
from ..core.cache.cached_encoder import CachingEncoder
from ..core.config import EncoderConfig, InputType
from ..core.encoder import Encoder
from .admission import DeviceLoad
from .autoscaling import QUEUED_BULK_TOKENS_METRIC, QUEUED_TOKENS_METRIC
from .coalescer import Coalescer
from .config import BatchingConfig
from .flow import RequestFlow
from .health import HealthProbe
from .metrics import ReplicaStats
from .runner import DeviceRunner
from .schemas import EncodeRequest, EncodeResult
from .updates import GroupUpdate

# When this module's imports were done (torch and the serving layer): the first mark of a replica's start-up.
_IMPORTED_AT = time.time()


class EmbeddingModel:
    """Ray Serve model deployment (undecorated: `serving.deployments` applies `serve.deployment`).

    `encode` answers one request and raises its failure; `encode_many` and `encode_stream` answer several
    requests in one call, so each request's failure is a value in its place (one request's failure must not
    fail the others)."""

    def __init__(self, encoder_config: EncoderConfig, cache: CacheConfig | None = None):
        # Wall-clock marks of this replica's start (`info()["startup"]`, bench/cold_start.py reads them).
        self._startup = {"import_started": IMPORT_STARTED, "imported": _IMPORTED_AT, "init_started": time.time()}
        self._encoder = Encoder(encoder_config)
        self._startup["model_loaded"] = time.time()
        self._stats, self._load = ReplicaStats(), DeviceLoad()
        self._runner = DeviceRunner(self._encoder, self._load, self._stats)
        # Serve then calls reconfigure(user_config) with the deployment's own values, before any request.
        self._coalescer = Coalescer(self._runner.run, self._load, BatchingConfig())
        self._cached = CachingEncoder(self._encoder, cache)
        self._flow = RequestFlow(self._encoder, self._cached, self._coalescer.submit, self._load, self._stats,
                                 lambda: self._coalescer.config.max_queue_tokens)
        self._probe = HealthProbe(self._encoder, self._runner.monitor, self._runner.on_device)
        self._replica_id = _replica_id()
        self._fingerprint = self._encoder.identity.fingerprint()
        self._startup["ready"] = time.time()

    def reconfigure(self, user_config: dict) -> None:
        """Apply `BatchingConfig` from `user_config`, live: Serve calls this on every config change. A budget
        that cannot hold one `max_length` text is refused (the replica fails to start, or the update fails and
        the running settings stay)."""
        config = BatchingConfig.model_validate(user_config or {})
        config.check_holds(self._encoder.max_length)
        self._coalescer.configure(config)
        self._runner.turns.scheduling, self._runner.turns.bulk_min_share = config.scheduling, config.bulk_min_share

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        """Encode one request's inputs, coalesced with whatever else is in flight on this replica."""
        [result] = await self.encode_many([request])
        if isinstance(result, BaseException):
            raise result
        return result

    async def encode_many(self, requests: list[EncodeRequest]) -> list[EncodeResult | BaseException]:
        """Several requests in one call, answered together when the last is done (`encode_stream` answers
        each as it is done): each request's result or failure, in order."""
        answers: dict[int, EncodeResult | BaseException] = {}
        async for update in self.encode_stream(requests):
            answers.update(update.answers)
        return [answers[i] for i in range(len(requests))]

    async def encode_stream(self, requests: list[EncodeRequest]) -> AsyncIterator[GroupUpdate]:
        """The ingress's coalesced call (one RPC for many HTTP requests): first, once all are admitted or
        refused, an update with every request already answered; then one update per set of requests that
        finish together. A request named by `request_id` can be dropped with `cancel`."""
        async for answers in self._flow.stream(requests):
            for _, answer in answers:
                if isinstance(answer, EncodeResult):
                    answer.identity = self._fingerprint
            yield GroupUpdate(self._replica_id, answers)

    async def cancel(self, request_ids: list[str], replica: str | None = None) -> int:
        """Drop the requests named (their callers went away): a job not yet on the device never runs; one in
        the batch on the device now finishes there and its vectors are discarded. `replica` is the id
        `encode_stream` reported: the request router (`routing`) sends the call there, and a cancel that
        reaches another replica (its owner is gone) drops nothing. Returns how many were still waiting here."""
        if replica is not None and replica != self._replica_id:
            return 0
        return self._flow.cancel(request_ids)

    async def tokenize(self, texts: list[str], add_special_tokens: bool = True,
                       input_type: InputType | None = None) -> list[list[dict]]:
        """Tokens of each text as encoded when sent as `input_type` (its instruction first), with ids, strings
        and character spans (TEI's /tokenize)."""
        details = partial(self._encoder.tokenizer.details, add_special_tokens=add_special_tokens)
        return await self._flow.on_host(details, self._encoder.instructed(texts, input_type))

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """Token ids back to text (TEI's /decode); `InvalidTokenIdError` outside the vocabulary."""
        decode = partial(self._encoder.tokenizer.decode, skip_special_tokens=skip_special_tokens)
        return await self._flow.on_host(decode, ids)

    async def info(self) -> dict:
        """Model, identity, device, batching, compute-thread and cache facts (for `/info` and `/health`); `pid`
        and `node_id` say which replica answered (on a cluster, which node: pids repeat across nodes);
        `encoded`: the texts and tokens computed per priority (`interactive`, `bulk`); `startup`: wall-clock
        marks of this replica's start (imports done, constructor entered, model loaded, ready)."""
        compute = {**self._runner.monitor.describe(), "forward_cpu_s": round(self._encoder.forward_cpu_s, 4),
                   "bulk_share": round(self._runner.turns.bulk_share(), 3)}
        return {**self._encoder.describe(), "batching": self._coalescer.config.model_dump(), "pid": os.getpid(),
                "replica_id": self._replica_id, "startup": self._startup,
                "node_id": ray.get_runtime_context().get_node_id(), "counts": dict(self._stats.counts),
                "encoded": {lane: dict(n) for lane, n in self._stats.encoded.items()},
                "compute": compute, "cache": self._cached.stats()}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics: the real tokens queued for this replica's device, per
        lane, the signal of `autoscaling.QueuedTokensPolicy`."""
        return {QUEUED_TOKENS_METRIC: self._load.queued_tokens("interactive"),
                QUEUED_BULK_TOKENS_METRIC: self._load.queued_tokens("bulk")}

    async def check_health(self) -> None:
        """Serve's health probe; raising marks the replica unhealthy. It never waits behind batches (`health`)."""
        await self._probe.check(self._coalescer.config.stall_timeout_s)


def _replica_id() -> str | None:
    """This replica's unique id (what `routing` pins a cancel to); None outside a Serve replica."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not in a replica (the class used directly)
        return None
