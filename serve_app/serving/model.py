"""The model deployment: a thin Serve adapter over the encoder, its cache and the batch queue.

Every route and output mix enters through `encode_stream()` (the ingress's coalesced calls, each request
answered as soon as it is done), `encode_many()` or `encode()`: cached texts are answered from the cache,
the rest are tokenized (so the queue can count real tokens; all requests of a call in one tokenizer
call), admitted by cost or refused (`admission`), queued one job per request (`batch_queue`), and stored
on the way back. Host work (cache, tokenizer) runs on one thread, once per call, and the device on
another, so the event loop only coordinates. A request's deadline (`EncodeRequest.deadline` or
`timeout_s`) holds from its arrival to its answer: past it the caller gets `RequestTimeoutError` and its
texts are never computed; a request cancelled by its caller (`cancel`) is dropped the same way.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import cast

import ray
from ray import serve

from ..core.cache import CacheConfig
from ..core.cache.cached_encoder import CachingEncoder
from ..core.config import EncoderConfig, InputType
from ..core.encoder import Encoder
from ..core.errors import (
    BgeM3Error,
    DeadlineTooShortError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLargeError,
    TextError,
    WouldMissDeadlineError,
)
from ..core.inputs import EncodeOptions
from ..core.outputs import Embedding
from .autoscaling import QUEUED_TOKENS_METRIC
from .batch_queue import BatchQueue, Job
from .config import BatchingConfig
from .metrics import ModelMetrics
from .schemas import EncodeRequest, EncodeResult, GroupUpdate, Timings


class EmbeddingModel:
    """Ray Serve model deployment (undecorated: `serving.deployments` applies `serve.deployment`)."""

    def __init__(self, encoder_config: EncoderConfig, cache: CacheConfig | None = None):
        self._encoder = Encoder(encoder_config)
        self._cached = CachingEncoder(self._encoder, cache)
        self._host = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-host")
        # One thread owns the device: batches run one at a time while the loop keeps coalescing.
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-compute")
        self._metrics = ModelMetrics()
        self._counts: Counter[str] = Counter()  # this replica's totals, in `info()` (metrics are cluster-wide)
        # Serve then calls reconfigure(user_config) with the deployment's own values, before any request.
        self._queue = BatchQueue(self._encoder, self._compute, self._metrics, self._counts, BatchingConfig())
        self._cancellable: dict[str, asyncio.Future] = {}  # request_id -> its `_answer` task, while it waits
        self._replica_id = _replica_id()

    def reconfigure(self, user_config: dict) -> None:
        """Apply `BatchingConfig` from `user_config`, live: Serve calls this on every config change.

        A budget that cannot hold one `max_length` text is refused (the replica fails to start, or the
        update fails and the running settings stay).
        """
        config = BatchingConfig.model_validate(user_config or {})
        config.check_holds(self._encoder.max_length)
        self._queue.configure(config)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        """Encode one request's texts, coalesced with whatever else is in flight on this replica."""
        [result] = await self.encode_many([request])
        if isinstance(result, BaseException):
            raise result
        return result

    async def encode_many(self, requests: list[EncodeRequest]) -> list[EncodeResult | BaseException]:
        """Several requests in one call, answered together when the last is done (`encode_stream` answers
        each as it is done); each still enters the batch queue on its own. A failed request comes back as
        its error."""
        answers: dict[int, EncodeResult | BaseException] = {}
        async for update in self.encode_stream(requests):
            answers.update(update.answers)
        return [answers[i] for i in range(len(requests))]

    async def encode_stream(self, requests: list[EncodeRequest]) -> AsyncIterator[GroupUpdate]:
        """The ingress's coalesced call (one RPC for many HTTP requests): first, once all are admitted or
        refused, an update with every request already answered (refused by cost, expired, failed, cache
        hits); then one update per set of requests that finish together. So a refusal reaches its caller
        at once, a short request does not wait for a long one, and the ingress may send its next call
        without waiting for this one to finish. A request named by `request_id` can be dropped with
        `cancel`; closing the stream drops every request not yet answered."""
        pending, queued = await self._admit_group(requests)
        index = {id(p): i for i, p in enumerate(pending)}
        yield GroupUpdate(self._replica_id, [(i, p.result) for i, p in enumerate(pending) if p.result is not None])
        answering = {asyncio.ensure_future(self._answer(p)): p for p in queued}
        cancellable = {p.request.request_id: task for task, p in answering.items() if p.request.request_id}
        self._cancellable.update(cancellable)
        try:
            while answering:
                finished, _ = await asyncio.wait(answering, return_when=asyncio.FIRST_COMPLETED)
                done = [answering.pop(task) for task in finished]
                computed = [p for p in done if isinstance(p.result, EncodeResult)]
                if computed and self._cached.cache is not None:
                    await asyncio.get_running_loop().run_in_executor(self._host, self._store_all, computed)
                yield GroupUpdate(self._replica_id, [(index[id(p)], cast("EncodeResult | BaseException", p.result))
                                                     for p in done])
        finally:  # the stream was closed or cancelled: whoever was waiting is gone
            for task in answering:
                task.cancel()
            for request_id in cancellable:
                self._cancellable.pop(request_id, None)

    async def cancel(self, request_ids: list[str], replica: str | None = None) -> int:
        """Drop the requests named (their callers went away): a job not yet on the device never runs; one
        in the batch on the device now finishes there and its vectors are discarded. Returns how many of
        them were still waiting here. `replica` is the id `encode_stream` reported, for the request router
        (`routing`); a cancel that reaches another replica finds nothing to drop."""
        tasks = [task for request_id in request_ids if (task := self._cancellable.get(request_id)) is not None]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def _admit_group(self, requests: list[EncodeRequest]) -> tuple[list[_Pending], list[_Pending]]:
        """Every request of a call, and those of them admitted to the batch queue; the others already hold
        their answer. Host work for all of them (cache lookups, tokenizing) takes one hop to the host
        thread: per-request hops, metrics and tokenizer calls were most of a replica's CPU per request
        when many one-text requests arrive together."""
        start, now = perf_counter(), time.time()
        pending = [_Pending.arrived(request, now, self._encoder.instructed(request.inputs, request.input_type))
                   for request in requests]
        for tag, n in Counter(p.options.outputs_tag for p in pending).items():
            self._metrics.requests.inc(n, tags={"outputs": tag})
        for p in pending:
            if p.deadline is not None and now >= p.deadline:  # expired on the way here: no work at all
                self._failed(p, RequestTimeoutError(p.budget))
        live = [p for p in pending if p.result is None]
        if not live:
            return pending, []
        await asyncio.get_running_loop().run_in_executor(self._host, self._prepare_all, live, start)
        return pending, self._admitted([p for p in live if p.job is not None])

    def _prepare_all(self, pending: list[_Pending], start: float) -> None:
        """On the host thread: each request answered from the cache, refused, or given its `Job`; the
        texts of all of them tokenized in one call."""
        todo = []
        for p in pending:
            try:
                if not self._answered_from_cache(p, start):
                    todo.append(p)
            except Exception as exc:  # the cache failed: this request fails, as it would alone
                self._failed(p, exc)
        try:
            tokenized = self._encoder.tokenize_many([(p.texts, p.options) for p in todo])
        except Exception as exc:  # the tokenizer itself failed (not a text's fault): every request here fails
            for p in todo:
                self._failed(p, exc)
            return
        limit = self._queue.config.max_queue_tokens
        for p, tokens in zip(todo, tokenized):
            if isinstance(tokens, TextError):  # name the text by its place in the request
                self._failed(p, tokens if p.misses is None else tokens.renumbered(p.misses))
                continue
            job = Job(p.options, *tokens, (perf_counter() - start) * 1e3, p.deadline)
            if job.n_tokens > limit:
                self._failed(p, RequestTooLargeError("texts", job.n_tokens, limit, "tokens"))
            else:
                p.job = job

    def _answered_from_cache(self, p: _Pending, start: float) -> bool:
        """Look `p`'s texts up when the cache is on: True when all were there (`p.result` set), else the
        misses are what is left to encode (`p.texts`)."""
        if self._cached.cache is None:
            return False
        p.cached = self._lookup(p.inputs, p.options)
        p.misses = [i for i, hit in enumerate(p.cached) if hit is None]
        if not p.misses:
            p.result = _cached_result(p.cached, (perf_counter() - start) * 1e3)  # type: ignore[arg-type]
            return True
        if len(p.misses) < len(p.cached):
            p.texts = [p.inputs[i] for i in p.misses]
        return False

    def _admitted(self, prepared: list[_Pending]) -> list[_Pending]:
        """Those of `prepared` the device can finish by their deadlines, each behind the ones before it
        (`admission`); the others are refused now, with nothing computed."""
        admitted, ahead, now = [], 0, time.time()
        for p in prepared:
            job = cast(Job, p.job)
            refused = self._queue.refusal(job, now, ahead)
            if refused is None:
                admitted.append(p)
                ahead += job.n_tokens
            else:
                self._failed(p, refused)
        return admitted

    async def _answer(self, p: _Pending) -> None:
        """Queue `p`'s job and wait for it until its deadline; its result or its own error lands in `p`.
        Cancelled (`cancel`), the job is marked so a batch that has not started leaves it out."""
        job = cast(Job, p.job)
        try:
            result = await self._until_deadline(self._queue.submit(job), p.deadline, p.budget)
        except asyncio.CancelledError:
            job.cancelled = True
            self._failed(p, RequestCancelledError())
            return
        except Exception as exc:
            self._failed(p, exc)
            return
        if isinstance(result, Exception):  # this request's own failure in a batch the others survived
            self._failed(p, result)
        else:
            p.result = result

    def _store_all(self, computed: list[_Pending]) -> None:
        """On the host thread: store what was computed, and put it back among each request's cache hits."""
        for p in computed:
            result = cast(EncodeResult, p.result)
            self._store(p.texts, p.options, result.embeddings)
            if p.cached is not None and p.misses is not None and len(p.misses) < len(p.cached):
                p.result = _merge_cached(p.cached, p.misses, result)

    def _failed(self, p: _Pending, exc: BaseException) -> None:
        """`p` fails with `exc`, counted at once (the call may still wait for its other requests)."""
        p.result = exc
        if isinstance(exc, BgeM3Error):
            self._metrics.errors.inc(tags={"kind": type(exc).__name__})
            if isinstance(exc, RequestTimeoutError):
                self._counts["timed_out_requests"] += 1
            elif isinstance(exc, (WouldMissDeadlineError, DeadlineTooShortError)):
                self._counts["refused_by_cost"] += 1
            elif isinstance(exc, RequestCancelledError):
                self._counts["cancelled_requests"] += 1
        else:
            self._metrics.errors.inc(tags={"kind": "internal"})

    async def _until_deadline(self, queued, deadline: float | None, timeout_s: float | None) -> EncodeResult:
        if deadline is None:
            return await queued
        # The caller is answered at its deadline even while its batch still waits; cancelling the wait
        # drops the job from the queue, and a job already in a batch is dropped there (`batch_queue`).
        try:
            return await asyncio.wait_for(queued, max(deadline - time.time(), 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(timeout_s) from None

    def _lookup(self, texts: list, options: EncodeOptions) -> list[Embedding | None]:
        found = self._cached.split(texts, options).found
        hits = sum(hit is not None for hit in found)
        if hits:
            self._metrics.cache_hits.inc(hits)
        if hits < len(found):
            self._metrics.cache_misses.inc(len(found) - hits)
        return found

    def _store(self, texts: list, options: EncodeOptions, embeddings: list[Embedding]) -> None:
        self._cached.store(texts, options, embeddings)
        stored = self._cached.stats().get("bytes")
        if stored is not None:
            self._metrics.cache_bytes.set(stored)

    async def tokenize(self, texts: list[str], add_special_tokens: bool = True,
                       input_type: InputType | None = None) -> list[list[dict]]:
        """Tokens of each text as encoded when sent as `input_type` (its instruction first), with ids, strings
        and character spans (TEI's /tokenize)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._host, partial(self._encoder.tokenizer.details, self._encoder.instructed(texts, input_type),
                                add_special_tokens=add_special_tokens))

    async def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """Token ids back to text (TEI's /decode)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._host, partial(self._encoder.tokenizer.decode, ids, skip_special_tokens=skip_special_tokens))

    async def info(self) -> dict:
        """Model, device, batching, compute-thread and cache facts (for `/info` and `/health`); `pid` and
        `node_id` say which replica answered (on a cluster, which node: pids repeat across nodes)."""
        return {**self._encoder.describe(), "batching": self._queue.config.model_dump(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "counts": dict(self._counts),
                "compute": self._queue.monitor.describe(),
                "cache": self._cached.stats()}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics: the real tokens queued for this replica's device,
        the signal of `autoscaling.QueuedTokensPolicy` (Serve's ongoing requests here are the ingress's
        coalesced calls, a handful whatever the load)."""
        return {QUEUED_TOKENS_METRIC: self._queue.queued_tokens}

    async def check_health(self) -> None:
        """Serve's health probe; raising marks the replica unhealthy. It never waits behind batches (a long
        one would outlast `health_check_timeout_s`): a stalled device or unusable vectors (NaN or zeros)
        fail it, a busy healthy one passes (`BatchQueue.check_health`, `health`)."""
        await self._queue.check_health()


@dataclass(eq=False)
class _Pending:
    """One request of a call on its way through the replica: its cache hits, its job, then its result."""

    request: EncodeRequest
    inputs: list  # the request's texts as encoded (after the instruction of its input_type), or its token ids
    texts: list  # what is left to encode: `inputs`, or those the cache did not have
    options: EncodeOptions
    deadline: float | None  # wall clock; None: no deadline
    budget: float | None  # the `timeout_s` a timeout error names (None when the deadline was the caller's)
    cached: list[Embedding | None] | None = None  # per text, when the cache is on
    misses: list[int] | None = None  # texts the cache did not have (None: all, cache off)
    job: Job | None = None
    result: EncodeResult | BaseException | None = None

    @classmethod
    def arrived(cls, request: EncodeRequest, now: float, inputs: list[str]) -> _Pending:
        """`request` as received at wall-clock `now` (its `timeout_s` counts from then), to encode as `inputs`."""
        budget = request.timeout_s if request.deadline is None else None
        return cls(request, inputs, inputs, request.options(), request.deadline_at(received=now), budget)


def _replica_id() -> str | None:
    """This replica's unique id (what `routing` pins a cancel to); None outside a Serve replica."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not in a replica (the class used directly)
        return None


def _cached_result(embeddings: list[Embedding], lookup_ms: float) -> EncodeResult:
    """A request answered wholly from the cache: no model batch (the lookup time is its tokenization time)."""
    return EncodeResult(embeddings=embeddings, prompt_tokens=sum(e.n_tokens for e in embeddings),
                        batch_requests=0, batch_texts=0, timings=Timings(tokenization_ms=lookup_ms))


def _merge_cached(cached: list[Embedding | None], misses: list[int], result: EncodeResult) -> EncodeResult:
    """Put computed embeddings into the cache misses' places, in request order."""
    embeddings = list(cached)
    for index, embedding in zip(misses, result.embeddings):
        embeddings[index] = embedding
    cached_tokens = sum(e.n_tokens for e in cached if e is not None)
    return result.model_copy(update={"embeddings": embeddings, "prompt_tokens": result.prompt_tokens + cached_tokens})
