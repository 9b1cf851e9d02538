"""Operations routes: `GET /health` (for load balancers; public even with API keys) and `GET /info`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ... import __version__
from ...gateway.tei import tei_info
from ...serving.config import RequestLimits
from .common import AUTH, MODEL, ServiceDep, error_responses, json_response

router = APIRouter()

# This server's own `/info` fields, taken by name from the model replica's `info()` (the TEI fields sit
# beside them; nothing is merged blindly, so no field can overwrite another).
MODEL_INFO_FIELDS = ("model", "revision", "dim", "vocab_size", "max_length", "device", "dtype", "max_forward_tokens",
                     "max_batch_size", "min_length_ratio", "torch_threads", "batching", "pid", "node_id", "counts",
                     "compute", "cache", "instructions", "identity")


def info_body(info: dict, limits: RequestLimits, served_model_name: str) -> dict:
    """The `/info` answer: TEI's fields (`max_batch_tokens` is the queue budget, what a request may hold),
    then this server's, each by name."""
    own = {field: info[field] for field in MODEL_INFO_FIELDS}
    return {**tei_info(info, limits), **own, "served_model_name": served_model_name, "version": __version__,
            "limits": limits.model_dump()}


@router.get("/health", responses=error_responses(503))
async def health(service: ServiceDep) -> Response:
    """200 `ok`, or 200 `degraded` while a model replica is missing or starting; 503 with the reason
    (Serve's own message for a failed model deployment) when the model does not answer."""
    return json_response(await service.health.verdict())


@router.get("/info", responses=error_responses(429, *MODEL, *AUTH))
async def info(service: ServiceDep) -> Response:
    """Model, dims, max length, device, dtype, batching settings, limits and version."""
    facts = await service.model_info(fresh=True)  # fresh: the counts change
    return json_response(info_body(facts, service.limits, service.served_model_name))
