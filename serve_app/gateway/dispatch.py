"""How the ingress's calls reach the model deployment: encode requests coalesced, streamed back and
cancellable (`ModelDispatcher`); any other method as one call with a timeout (`call_model`). Either way a
failure is the replica's own error or what a Ray failure means (`errors.from_model_call`).

The replicas' refusals are remembered (`gate`, `shedding`), so a transport can refuse before any call what
they already decide (`EmbeddingService.shed`).
Concurrent requests (HTTP or gRPC) share one `encode_stream` call to a model replica (one RPC instead of one
each), at most `limits.model_calls_in_flight` calls being admitted at a time; meanwhile new requests gather
into the next one. A call holds its slot only until the replica has admitted or refused its requests (the
stream's first item), not until they are computed: a refusal comes back at once, and long admitted
requests never keep new ones from reaching the replica. Each request is then answered by the stream item
that carries it. A lightly loaded ingress sends each request at once; with more requests in flight than
call slots, a new request waits for the next answer to come back (the device is free for the next batch)
or `limits.coalesce_wait_s`, whichever is first, and those that waited go in one call. Without that wait,
requests that arrive evenly spaced, as a gRPC channel's streams do, each find a free slot and go alone:
one model call per request, whose host CPU then caps the model replica at a third of its rate.

A request whose caller goes away (client disconnect, or the ingress's own timeout) after its call was
sent is cancelled on the replica that holds it (`EmbeddingModel.cancel`, routed there by
`serving.routing`); before that, leaving the coalescing queue drops it. A call whose replica dies is
sent again, for its unanswered requests only (encoding has no side effects; Serve routes it to a live or
replacement replica), up to `limits.model_retries` times.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from ..core.errors import ModelUnavailableError
from ..serving.batch_queue import BatchQueue
from ..serving.config import RequestLimits
from ..serving.request_scope import detached_task, outside_request
from ..serving.routing import PIN_KWARG
from ..serving.schemas import EncodeRequest, EncodeResult
from ..serving.updates import GroupUpdate
from .errors import from_model_call
from .shedding import RefusalGate

logger = logging.getLogger("serve_app.gateway")

Answer = EncodeResult | BaseException


@dataclass(eq=False)
class _Ticket:
    """One request in flight to the model: where it went and, once it comes, its answer."""

    request: EncodeRequest
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    replica: str | None = None  # the replica holding it, once its call was admitted
    abandoned: bool = False  # its caller left: nobody waits for the answer

    def settle(self, answer: Answer) -> None:
        """Give the waiting caller its answer (a caller that left has cancelled the future)."""
        if not self.answer.done():
            self.answer.set_result(answer)

    @property
    def answered(self) -> bool:
        """Whether the replica's answer came: the future is also done (cancelled) once its caller left."""
        return self.answer.done() and not self.answer.cancelled()


class ModelDispatcher:
    """One ingress replica's coalesced, streamed, cancellable calls to the model deployment."""

    def __init__(self, model: DeploymentHandle, limits: RequestLimits):
        self._model = model
        self._stream: DeploymentHandle | None = None  # `model` streaming; made on first use (apps built for their
        # OpenAPI schema alone have no real handle)
        self._retries = limits.model_retries
        self._calls: BatchQueue[_Ticket] = BatchQueue(self._admit, _one, limits.max_requests_per_model_call,
                                                      wait_s=0, slots=limits.model_calls_in_flight)
        self._coalesce_wait_s, self._calls_in_flight = limits.coalesce_wait_s, limits.model_calls_in_flight
        self._in_flight = 0  # this replica's requests sent and not yet answered
        self._turn: asyncio.Future | None = None  # what requests arriving while others are in flight wait for
        self._background: set[asyncio.Task] = set()  # streams being read and cancels being sent
        self.gate = RefusalGate()  # what the replicas' refusals say of their queues (`EmbeddingService.shed`)

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        """`request`'s result; raises its failure. Cancelling this await (the caller left) drops the request:
        from the coalescing queue, or on the replica holding it."""
        ticket = _Ticket(request.model_copy(update={"request_id": uuid.uuid4().hex}))
        busy = self._in_flight >= self._calls_in_flight
        self._in_flight += 1
        try:
            if busy and self._coalesce_wait_s:
                await self._next_turn()
            await self._calls.put(ticket)
            answer = await ticket.answer
        except asyncio.CancelledError:
            ticket.abandoned = True
            if ticket.replica is not None and not ticket.answered:
                self._spawn(self._cancel(ticket.replica, [ticket]))
            # else: still in the coalescing queue (`_admit` leaves it out), or its call not yet admitted
            # (`_apply` cancels it once the replica is known)
            raise
        finally:
            self._in_flight -= 1
        if isinstance(answer, BaseException):
            raise from_model_call(answer)
        return answer

    async def _next_turn(self) -> None:
        """Until an answer comes back or `coalesce_wait_s` passes: every request waiting then is released in
        the same turn of the event loop, so they go in one call."""
        if self._turn is None or self._turn.done():
            loop = asyncio.get_running_loop()
            self._turn = loop.create_future()
            loop.call_later(self._coalesce_wait_s, _release, self._turn)
        await asyncio.wait([self._turn])  # not `await turn`: a caller that leaves must not cancel the others' turn

    async def _admit(self, tickets: list[_Ticket]) -> list[None]:
        """One call for a group of requests, returning once the replica has admitted or refused them; the
        rest of its stream is read in the background."""
        live = [t for t in tickets if not t.abandoned]
        if live:
            await self._open(live, attempt=0)
        return [None] * len(tickets)

    async def _open(self, tickets: list[_Ticket], attempt: int) -> None:
        """Send `tickets` in one `encode_stream` call and apply its first update; a replica that dies
        before that is retried here, one that dies later by `_read`."""
        if self._stream is None:
            self._stream = self._model.options(stream=True)
        while True:
            stream = self._stream.encode_stream.remote([t.request for t in tickets])
            try:
                first = await stream.__anext__()
            except RayActorError as exc:
                if attempt >= self._retries:
                    self._fail(tickets, exc)
                    return
                attempt += 1
                logger.warning("model replica lost during a call (%s), attempt %d", type(exc).__name__, attempt)
                continue
            except Exception as exc:  # the call itself failed (e.g. overload): every request gets it
                self._fail(tickets, exc)
                return
            break
        # Read to the end even when all are answered: the replica's stream then closes normally.
        self._spawn(self._read(stream, self._apply(first, dict(enumerate(tickets))), attempt))

    async def _read(self, stream: Any, waiting: dict[int, _Ticket], attempt: int) -> None:
        """Settle each request as the stream answers it; requests left unanswered by a dead replica are
        sent again, those whose callers left are not."""
        try:
            async for update in stream:
                waiting = self._apply(update, waiting)
        except RayActorError as exc:
            resend = [t for t in waiting.values() if not t.abandoned]
            if attempt >= self._retries:
                self._fail(resend, exc)
            elif resend:
                logger.warning("model replica lost during a call (%s), attempt %d", type(exc).__name__, attempt + 1)
                for ticket in resend:
                    ticket.replica = None  # a cancel from now on goes to the replica of the new call
                await self._open(resend, attempt + 1)
            return
        except Exception as exc:
            self._fail(list(waiting.values()), exc)
            return
        if waiting:  # the stream ended without them: a bug on the replica, not the client's fault
            self._fail(list(waiting.values()),
                       RuntimeError("the model replica closed the call without answering every request"))

    def _apply(self, update: GroupUpdate, waiting: dict[int, _Ticket]) -> dict[int, _Ticket]:
        """Settle the requests `update` answers (by their index in the call); the others are still waiting,
        now known to be on `update.replica`, which is told to drop those whose callers already left."""
        self.gate.heard(update.replica, [answer for _, answer in update.answers], time.time())
        for i, answer in update.answers:
            waiting.pop(i).settle(answer)
        if update.answers and self._turn is not None:
            _release(self._turn)
        left = []
        for ticket in waiting.values():
            if ticket.replica is None and ticket.abandoned:
                left.append(ticket)
            ticket.replica = update.replica
        if left:
            self._spawn(self._cancel(update.replica, left))
        return waiting

    def _fail(self, tickets: list[_Ticket], exc: BaseException) -> None:
        if isinstance(exc, RayActorError):
            exc = ModelUnavailableError(f"the model replica died while encoding ({type(exc).__name__}); retry")
        for ticket in tickets:
            ticket.settle(exc)

    async def _cancel(self, replica: str | None, tickets: list[_Ticket]) -> None:
        """Tell `replica` to drop `tickets` (best effort: a lost cancel only costs compute)."""
        try:
            await self._model.cancel.remote([t.request.request_id for t in tickets], **{PIN_KWARG: replica})
        except Exception as exc:
            logger.info("cancel of %d abandoned requests not delivered (%s)", len(tickets), type(exc).__name__)

    def _spawn(self, coro: Any) -> None:
        task = detached_task(coro)  # stream reads and cancels: never tied to (cancelled with) one caller's request
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _one(_: _Ticket) -> int:
    return 1  # a model call's size: requests


def _release(turn: asyncio.Future) -> None:
    if not turn.done():
        turn.set_result(None)


async def call_model(model: DeploymentHandle, method: str, *args: Any, timeout: float) -> Any:
    """`model.<method>.remote(*args)` within `timeout` (then cancelled: `TimeoutError`); else its answer, or
    its failure as `errors.from_model_call` says."""
    # Outside the caller's request (`request_scope`): a gRPC stream makes these side by side, and in the
    # request's context Serve lost one now and then. Cancelled here when the caller leaves instead.
    response = outside_request(getattr(model, method).remote, *args)
    try:
        return await asyncio.wait_for(_await(response), timeout)
    except asyncio.TimeoutError:
        response.cancel()
        raise TimeoutError from None
    except asyncio.CancelledError:
        response.cancel()
        raise
    except Exception as exc:
        raise from_model_call(exc) from None


async def _await(response: Any) -> Any:
    # `wait_for` needs a coroutine; a handle's response is only awaitable.
    return await response
