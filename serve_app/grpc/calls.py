"""The rules every gRPC call passes, the same as HTTP's and from the same objects (`gateway.access`,
`EmbeddingService`): API key, message size, priority, early refusal, admission; then the answer, or the
failure's status (`errors.set_status`).

`Call` carries what the metadata said (the `authorization` key, the `x-priority` lane). `unary` runs one
request; `stream` runs a bidirectional stream: one answer per request, in order, the requests computed
side by side as they arrive (at most `STREAM_WINDOW` at once); the first failure ends the stream with its
status, naming the message (`message 3: ...`). A cancelled call (the client left, or its deadline passed)
cancels the handler, and with it the model replica's work not yet started (`gateway.dispatch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from ray.serve.grpc_util import RayServegRPCContext

from ..gateway.access import ApiKeys, check_body_size, parse_priority
from ..gateway.service import EmbeddingService
from ..serving.schemas import Priority
from .errors import set_status

PRIORITY_METADATA = "x-priority"  # HTTP's `X-Priority` header; gRPC metadata keys are lower-case
STREAM_WINDOW = 32  # a stream's requests in flight at once: enough to fill a batch, bounded for memory

Request = TypeVar("Request", bound=Message)
Answer = TypeVar("Answer", bound=Message)


@dataclass(frozen=True)
class Call:
    """One call's metadata, as the rules read it."""

    authorization: str | None
    priority: Priority | None  # None: the metadata did not say

    @classmethod
    def of(cls, context: RayServegRPCContext) -> Call:
        """The call's metadata; an unknown priority is `InvalidRequestError` naming `x-priority`."""
        metadata = dict(context.invocation_metadata())
        priority = metadata.get(PRIORITY_METADATA)
        return cls(metadata.get("authorization"),
                   parse_priority(priority, PRIORITY_METADATA) if priority is not None else None)


class CallRules:
    """The rules of one ingress replica's gRPC calls, over its service and API keys."""

    def __init__(self, service: EmbeddingService, keys: ApiKeys):
        self.service, self.keys = service, keys

    def admit(self, context: RayServegRPCContext, *, encodes: bool) -> Call:
        """The call's metadata once its key is checked; for a call that `encodes`, the refusal the model
        replicas already decide for its lane (RESOURCE_EXHAUSTED before any work)."""
        call = Call.of(context)
        self.keys.check(call.authorization)
        if encodes and (refusal := self.service.shed(call.priority or "interactive")) is not None:
            raise refusal
        return call

    def check_size(self, request: Message) -> None:
        """`BodyTooLargeError` for a message over `max_body_bytes`, the HTTP body limit (Serve's gRPC proxy
        itself takes up to 2 GiB)."""
        check_body_size(request.ByteSize(), self.service.limits.max_body_bytes)

    async def unary(self, request: Request, context: RayServegRPCContext, empty: type[Answer],
                    handle: Callable[[Request, Call], Awaitable[Answer]], *, encodes: bool = True) -> Answer:
        """`handle(request, call)` under the rules; a failure answers `empty()` with its status set."""
        try:
            call = self.admit(context, encodes=encodes)
            self.check_size(request)
            with self.service.admission.held():
                return await handle(request, call)
        except Exception as exc:  # CancelledError is not one: a cancelled call stays cancelled
            set_status(context, exc)
            return empty()

    async def stream(self, requests: AsyncIterator[Request], context: RayServegRPCContext,
                     handle: Callable[[Request, Call], Awaitable[Answer]], *,
                     encodes: bool = True) -> AsyncIterator[Answer]:
        """One `handle(request, call)` answer per request of `requests`, in order. The stream holds one place
        in the admission limit; the first failure sets its status and ends the stream (Serve's proxy sends a
        failed stream's code and details, so the error is raised after setting them)."""
        try:
            call = self.admit(context, encodes=encodes)
            self.service.admission.admit()
        except Exception as exc:
            set_status(context, exc)
            raise
        window: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(STREAM_WINDOW)

        async def one(request: Request) -> Answer:
            self.check_size(request)
            return await handle(request, call)

        async def read() -> None:
            async for request in requests:
                await window.put(asyncio.ensure_future(one(request)))
            await window.put(None)

        reader = asyncio.ensure_future(read())
        index = 0
        try:
            while (task := await _next(window, reader)) is not None:
                try:
                    answer = await task
                except Exception as exc:
                    set_status(context, exc, where=f"message {index}: ")
                    raise
                yield answer
                index += 1
        finally:
            self.service.admission.release()
            reader.cancel()
            while not window.empty():
                if (left := window.get_nowait()) is not None:
                    left.cancel()


async def _next(window: asyncio.Queue, reader: asyncio.Future) -> Any:
    """The next task of `window`; the reader's own failure (the input stream broke) is raised."""
    getter = asyncio.ensure_future(window.get())
    await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done() and reader.done() and (failure := reader.exception()) is not None:
        getter.cancel()
        raise failure
    return await getter  # a reader that finished normally put its last item (None) first
