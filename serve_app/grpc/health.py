"""The standard gRPC health service (`grpc.health.v1.Health`): SERVING exactly when `/health` answers 200 (the
model deployment answers, its replicas all running or some still starting: `gateway.health`), NOT_SERVING
when it answers 503. Public, as `/health` is: load balancers probe without credentials.

A service name is one of `SERVICES` or empty (the whole server); any other is NOT_FOUND, as the protocol
asks (`Watch` answers SERVICE_UNKNOWN instead). `Watch` sends the status at once, then each change, checking
every `WATCH_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2 as pb
from ray.serve.grpc_util import RayServegRPCContext

from ..core.errors import BgeM3Error
from ..gateway.health import ModelHealth

SERVICES = frozenset({"", "tei.v1.Info", "tei.v1.Embed", "tei.v1.Tokenize", "tei.v1.Predict", "tei.v1.Rerank",
                      "bge_m3.v1.Embedder"})
WATCH_INTERVAL_S = 1.0


async def serving_status(health: ModelHealth) -> int:
    """SERVING or NOT_SERVING, by `/health`'s rule."""
    try:
        await health.verdict()
    except BgeM3Error:
        return pb.HealthCheckResponse.NOT_SERVING
    return pb.HealthCheckResponse.SERVING


def known(request: pb.HealthCheckRequest, context: RayServegRPCContext) -> bool:
    """Whether `request.service` is one of this server's; if not, NOT_FOUND is set on `context`."""
    if request.service in SERVICES:
        return True
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details(f"service: unknown service {request.service!r}; this server has "
                        f"{', '.join(sorted(s for s in SERVICES if s))} (or '' for all)")
    return False


async def check(health: ModelHealth, request: pb.HealthCheckRequest,
                context: RayServegRPCContext) -> pb.HealthCheckResponse:
    """`Check`: the status now."""
    if not known(request, context):
        return pb.HealthCheckResponse()
    return pb.HealthCheckResponse(status=await serving_status(health))


async def watch(health: ModelHealth, request: pb.HealthCheckRequest,
                context: RayServegRPCContext) -> AsyncIterator[pb.HealthCheckResponse]:
    """`Watch`: the status now, then each change, until the client leaves (an unknown service: SERVICE_UNKNOWN,
    as the protocol asks of `Watch`)."""
    if request.service not in SERVICES:
        yield pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVICE_UNKNOWN)
        return
    last = None
    while True:
        if (status := await serving_status(health)) != last:
            yield pb.HealthCheckResponse(status=status)
            last = status
        await asyncio.sleep(WATCH_INTERVAL_S)
