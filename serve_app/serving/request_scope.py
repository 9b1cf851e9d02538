"""Work kept out of the Ray Serve request that happens to start it.

Serve ties a call made through a deployment handle to the request in whose context it is made (the
`contextvars` context: a task copies the one it is created in): the call is cancelled with that request, and
it is counted among that request's child calls (bookkeeping Ray's source says is not thread-safe, while
Serve runs the router on a loop of its own). Two kinds of model call must not be tied so: work shared by
many requests (a coalesced batch must not die with the caller that happened to start it), and calls one
request makes side by side (a gRPC stream's messages: tied, about one stream in thirty lost a call, which
hung until the ingress's timeout; the likely cause is that bookkeeping). Whoever uses these helpers cancels
the work itself when its own caller leaves. Such a call gets a Serve request id of its own: the model
replica's log names it, not the HTTP or gRPC request's id (a coalesced call serves many requests anyway).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def detached_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """`coro` as a task of the running loop, in a context of its own."""
    return contextvars.Context().run(asyncio.get_running_loop().create_task, coro)


def outside_request(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` called in a context of its own (e.g. a handle's `.remote`)."""
    return contextvars.Context().run(fn, *args, **kwargs)
