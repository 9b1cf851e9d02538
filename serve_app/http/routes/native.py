"""This server's own routes: `POST /encode` (any mix of BGE-M3's outputs) and `POST /score`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ...core.scoring import ScoreWeights
from .. import serialization
from ..fast_path import hot
from ..protocol import EncodeBody, ScoreBody
from .common import ENCODE_ERRORS, PriorityHeader, ServiceDep, json_response, priority_of

router = APIRouter()

_FORMATS = {"encoding_format", "dense_dtype", "colbert_dtype"}  # how to write the outputs, not what to compute


@router.post("/encode", responses=ENCODE_ERRORS)
@hot
async def encode(body: EncodeBody, service: ServiceDep, x_priority: PriorityHeader = None) -> Response:
    """Any mix of dense, sparse (ids or token strings) and ColBERT outputs, for texts or token ids."""
    priority = priority_of(body.priority, x_priority)
    inputs, field = body.inputs
    service.check_count(inputs, field)
    result = await service.encode(inputs, field, priority=priority,
                                  **body.model_dump(exclude=_FORMATS | {"texts", "token_ids", "priority"}))
    return json_response(serialization.encode_response(result, service.served_model_name,
                                                       **body.model_dump(include=_FORMATS)), result)


@router.post("/score", responses=ENCODE_ERRORS)
async def score(body: ScoreBody, service: ServiceDep, x_priority: PriorityHeader = None) -> Response:
    """Dense, sparse, ColBERT and hybrid relevance of each passage to the query."""
    scores, result = await service.score(body.query, body.passages, ScoreWeights(**body.weights.model_dump()),
                                         truncate=body.truncate, priority=priority_of(None, x_priority))
    return json_response(serialization.score_response(scores, result, service.served_model_name), result)
