"""A call's requests through the model replica: prepared, admitted, answered. Ray-free: the queue
(`submit`), the device's load and the stats are given, so the flow runs and is tested without Serve.

1. Prepare (one hop to the host thread for all the requests of a call: per-request hops, metrics and
   tokenizer calls were most of a replica's CPU per request when many one-text requests arrive together):
   the cache answers what it holds (`CacheSplit`); the rest is tokenized in one tokenizer call, so the queue
   counts real tokens, and a request over `max_queue_tokens` is refused (413).
2. Admit by cost (`admission`): a request the device cannot finish by its deadline is refused now; one whose
   deadline the queue ahead alone would miss, before step 1 (a storm of retries costs no tokenizer calls).
3. Answer: each admitted request is queued and awaited until its deadline (`EncodeRequest.deadline` or
   `timeout_s`, counted from its arrival here); past it the caller gets `RequestTimeoutError` and its
   inputs are never computed, and a request cancelled by its caller (`cancel`) is dropped the same way.
   What was computed is stored in the cache and merged among the request's hits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..core.cache import EmbeddingCache
from ..core.cache.cached_encoder import CacheSplit, CachingEncoder
from ..core.errors import RequestCancelledError, RequestTimeoutError, RequestTooLargeError, TextError
from ..core.inputs import EncodeOptions, check_token_ids
from .admission import DeviceLoad
from .job import Job
from .schemas import EncodeRequest, EncodeResult, Timings

if TYPE_CHECKING:
    from ..core.encoder import Encoder
    from .metrics import ReplicaStats

T = TypeVar("T")
Answer = EncodeResult | BaseException
Answers = list[tuple[int, Answer]]  # (the request's index in its call, its answer)


@dataclass(eq=False)
class Pending:
    """One request of a call on its way through the replica: its cache split, its job, then its answer."""

    request: EncodeRequest
    inputs: list  # the request's texts as encoded (after the instruction of its input_type), or its token ids
    options: EncodeOptions
    deadline: float | None  # wall clock; None: no deadline
    budget: float | None  # the `timeout_s` a timeout error names (None when the deadline was the caller's)
    split: CacheSplit | None = None  # against the cache, when it is on
    job: Job | None = None
    answer: Answer | None = None

    @classmethod
    def arrived(cls, request: EncodeRequest, now: float, inputs: list) -> Pending:
        """`request` as received at wall-clock `now` (its `timeout_s` counts from then), to encode as `inputs`."""
        budget = request.timeout_s if request.deadline is None else None
        return cls(request, inputs, request.options(), request.deadline_at(received=now), budget)

    @property
    def todo(self) -> list:
        """What is left to encode: the inputs the cache did not have (all of them with the cache off)."""
        return self.inputs if self.split is None else self.split.todo(self.inputs)


class RequestFlow:
    """Prepares, admits and answers the requests of the calls this replica receives."""

    def __init__(self, encoder: Encoder, cached: CachingEncoder, submit: Callable[[Job], asyncio.Future],
                 load: DeviceLoad, stats: ReplicaStats, max_queue_tokens: Callable[[], int]):
        self._encoder, self._cached, self._submit = encoder, cached, submit
        self._load, self._stats, self._max_queue_tokens = load, stats, max_queue_tokens
        self._host = ThreadPoolExecutor(1, thread_name_prefix="bge-m3-host")  # cache and tokenizer work
        self._cancellable: dict[str, _Answers] = {}  # request_id -> the waiting requests of its call

    async def on_host(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the host thread (cache and tokenizer work, off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._host, fn, *args)

    async def stream(self, requests: list[EncodeRequest]) -> AsyncIterator[Answers]:
        """First, once all are admitted or refused, every request already answered (refused, expired, failed,
        cache hits); then the requests that finish together, as they finish. Closing the stream drops every
        request not yet answered."""
        pending, queued = await self._admit_all(requests)
        index = {id(p): i for i, p in enumerate(pending)}
        yield [(i, p.answer) for i, p in enumerate(pending) if p.answer is not None]
        if not queued:
            return
        answers = _Answers(self)
        for p in queued:
            answers.wait_for(p, self._submit(cast(Job, p.job)))
        try:
            while done := await answers.next():
                computed = [p for p in done if isinstance(p.answer, EncodeResult)]
                if computed and self._cached.cache is not None:
                    await self.on_host(self._store_all, computed)
                yield [(index[id(p)], cast(Answer, p.answer)) for p in done]
        finally:  # the stream was closed or cancelled: whoever was waiting is gone
            answers.drop_all()

    def cancel(self, request_ids: list[str]) -> int:
        """Drop the requests named that still wait here; how many there were."""
        found = [(request_id, answers) for request_id in request_ids
                 if (answers := self._cancellable.get(request_id)) is not None]
        for request_id, answers in found:
            answers.cancel(request_id)
        return len(found)

    async def _admit_all(self, requests: list[EncodeRequest]) -> tuple[list[Pending], list[Pending]]:
        """Every request of a call, and those of them admitted to the queue; the others already hold their answer."""
        start, now = perf_counter(), time.time()
        pending = [Pending.arrived(r, now, self._encoder.instructed(r.inputs, r.input_type)) for r in requests]
        self._stats.arrived([(p.options, p.request.priority) for p in pending])
        for p in pending:
            if p.deadline is not None and now >= p.deadline:  # expired on the way here: no work at all
                self._fail(p, RequestTimeoutError(p.budget))
            elif (refused := self._load.refusal_unseen(p.request.priority, p.deadline, now)) is not None:
                self._fail(p, refused)  # the queue ahead decides alone: no lookup, no tokenizer call
        live = [p for p in pending if p.answer is None]
        if live:
            await self.on_host(self._prepare_all, live, start)
        return pending, self._admitted([p for p in live if p.job is not None])

    def _prepare_all(self, pending: list[Pending], start: float) -> None:
        """On the host thread: each request answered from the cache, refused, or given its `Job`; the inputs
        of all of them tokenized in one call."""
        todo = []
        for p in pending:
            try:
                if p.request.token_ids is not None:  # before the cache: no key is made of ids no model has
                    check_token_ids(p.inputs, self._encoder.tokenizer.vocab_size)
                if not self._answered_from_cache(p, start):
                    todo.append(p)
            except Exception as exc:  # a bad id list, or the cache failed: this request fails, as it would alone
                self._fail(p, exc)
        try:
            tokenized = self._encoder.tokenize_many([(p.todo, p.options) for p in todo])
        except Exception as exc:  # the tokenizer itself failed (not an input's fault): every request here fails
            for p in todo:
                self._fail(p, exc)
            return
        limit = self._max_queue_tokens()
        for p, tokens in zip(todo, tokenized, strict=True):
            if isinstance(tokens, TextError):  # name the input by its place in the request
                self._fail(p, tokens if p.split is None else p.split.renumbered(tokens))
                continue
            job = Job(p.options, *tokens, (perf_counter() - start) * 1e3, p.deadline, priority=p.request.priority)
            if job.n_tokens > limit:
                self._fail(p, RequestTooLargeError("texts", job.n_tokens, limit, "tokens"))
            else:
                p.job = job

    def _answered_from_cache(self, p: Pending, start: float) -> bool:
        """Look `p`'s inputs up when the cache is on: True when all were there (`p.answer` set)."""
        if self._cached.cache is None:
            return False
        p.split = split = self._cached.split(p.inputs, p.options)
        self._stats.looked_up(len(split.found) - len(split.misses), len(split.misses))
        if split.complete:  # no model batch: the lookup time is its tokenization time
            embeddings = split.merge([])
            p.answer = EncodeResult(embeddings=embeddings, prompt_tokens=split.hit_tokens, batch_requests=0,
                                    batch_texts=0, timings=Timings(tokenization_ms=(perf_counter() - start) * 1e3))
        return split.complete

    def _admitted(self, prepared: list[Pending]) -> list[Pending]:
        """Those of `prepared` the device can finish by their deadlines, each behind the ones before it; the
        others are refused now, with nothing computed."""
        admitted, now = [], time.time()
        ahead = {"interactive": 0, "bulk": 0}
        for p in prepared:
            job = cast(Job, p.job)
            refused = self._load.refusal(job, now, ahead)
            if refused is None:
                admitted.append(p)
                ahead[job.priority] += job.n_tokens
            else:
                self._fail(p, refused)
        return admitted

    def _store_all(self, computed: list[Pending]) -> None:
        """On the host thread: store what was computed, and put it back among each request's cache hits."""
        config = cast(EmbeddingCache, self._cached.cache).config  # called only with the cache on
        for p in computed:
            result = cast(EncodeResult, p.answer)
            if config.fills_from(p.request.priority):  # a backfill does not evict the queries' entries
                self._cached.store(p.todo, p.options, result.embeddings)
            if p.split is not None:
                p.answer = result.model_copy(update={"embeddings": p.split.merge(result.embeddings),
                                                     "prompt_tokens": result.prompt_tokens + p.split.hit_tokens})
        self._stats.cache_size(self._cached.stats().get("bytes"))

    def _fail(self, p: Pending, exc: BaseException) -> None:
        """`p` fails with `exc`, counted at once (the call may still wait for its other requests)."""
        p.answer = exc
        self._stats.failed(exc)


class _Answers:
    """One call's queued requests while they wait: each is answered once, by the first of its job's outcome,
    its deadline (`RequestTimeoutError`) or a cancel (`RequestCancelledError`), with no task per request (one
    future, a timer when it has a deadline): per-request tasks were a large part of a replica's CPU per
    one-text request."""

    def __init__(self, flow: RequestFlow):
        self._flow, self._loop = flow, asyncio.get_running_loop()
        self.waiting: dict[Pending, tuple[asyncio.Future, asyncio.TimerHandle | None]] = {}
        self._by_id: dict[str, Pending] = {}
        self._done: list[Pending] = []
        self._wake: asyncio.Future | None = None

    def wait_for(self, p: Pending, answered: asyncio.Future) -> None:
        """Wait for `answered` (what the queue gives `p`'s job), at most until `p`'s deadline."""
        timer = None
        if p.deadline is not None:  # answered at its deadline even while its batch still waits (then dropped)
            timer = self._loop.call_later(max(p.deadline - time.time(), 0.0), self._settle, p,
                                          RequestTimeoutError(p.budget))
        self.waiting[p] = (answered, timer)
        answered.add_done_callback(lambda f: self._settle(p, f.result()) if not f.cancelled() else None)
        if p.request.request_id:
            self._by_id[p.request.request_id] = p
            self._flow._cancellable[p.request.request_id] = self

    async def next(self) -> list[Pending]:
        """The requests answered since the last call: at least one while any waits; none once all were
        handed out (requests may be answered while the stream is suspended in its last `yield`)."""
        while not self._done and self.waiting:
            self._wake = self._loop.create_future()
            await self._wake
        done, self._done = self._done, []
        return done

    def cancel(self, request_id: str) -> None:
        """The caller of `request_id` left: its job is never computed if its batch has not started."""
        p = self._by_id.get(request_id)
        if p is not None:
            self._settle(p, RequestCancelledError())

    def drop_all(self) -> None:
        """Every request still waiting is cancelled (the stream was closed)."""
        for p in list(self.waiting):
            self._settle(p, RequestCancelledError())
        for request_id in self._by_id:
            self._flow._cancellable.pop(request_id, None)

    def _settle(self, p: Pending, answer: Answer) -> None:
        entry = self.waiting.pop(p, None)
        if entry is None:  # answered already
            return
        answered, timer = entry
        if timer is not None:
            timer.cancel()
        if isinstance(answer, EncodeResult):
            p.answer = answer
        else:
            if isinstance(answer, RequestCancelledError):
                cast(Job, p.job).cancelled = True  # a batch that has not started leaves it out
            answered.cancel()  # no longer counted as queued
            self._flow._fail(p, answer)
        self._done.append(p)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
