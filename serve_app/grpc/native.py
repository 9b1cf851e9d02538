"""This server's own gRPC API (`bge_m3.v1.Embedder`, `protos/bge_m3.proto`): `Encode` (any mix of the three
outputs, one pass, vectors as packed little-endian bytes), `Score` and `Info`, over the service.

A field left unset takes the same default as `POST /encode` (`EncodeOptions`); the rules and the errors are
the service's, so `Encode` answers what `/encode` answers, in bytes instead of JSON floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import __version__
from ..core.inputs import EncodeOptions, Overflow
from ..core.outputs import Embedding
from ..core.scoring import ScoreWeights
from ..gateway.access import choose_priority
from ..gateway.errors import InvalidRequestError
from ..gateway.service import EmbeddingService
from ..serving.schemas import Priority
from .calls import PRIORITY_METADATA, Call
from .protos import bge_m3_pb2 as pb

INPUT_TYPES: dict[int, str] = {pb.INPUT_TYPE_QUERY: "query", pb.INPUT_TYPE_PASSAGE: "passage"}
OVERFLOWS: dict[int, Overflow] = {pb.OVERFLOW_TRUNCATE: "truncate", pb.OVERFLOW_CHUNK: "chunk"}
PRIORITIES: dict[int, Priority] = {pb.PRIORITY_INTERACTIVE: "interactive", pb.PRIORITY_BULK: "bulk"}
ENCODINGS: dict[int, str] = {pb.VECTOR_ENCODING_FLOAT32: "<f4", pb.VECTOR_ENCODING_FLOAT16: "<f2"}
_OUTPUTS = ("dense", "sparse", "colbert", "sparse_tokens", "truncate")


def _enum(table: dict[int, Any], value: int, field: str, default: Any = None) -> Any:
    """An enum field's meaning; 0 (unspecified) is `default`; a number this server does not know is
    `InvalidRequestError` naming `field` (a newer client's value)."""
    if value == 0:
        return default
    if value not in table:
        raise InvalidRequestError(field, f"{field}: unknown value {value}", code="invalid_value")
    return table[value]


def priority_of(value: int, call: Call) -> Priority:
    """The request's lane from its `priority` field and the `x-priority` metadata (`choose_priority`)."""
    return choose_priority(_enum(PRIORITIES, value, "priority"), call.priority, PRIORITY_METADATA)


def _inputs(request: pb.EncodeRequest) -> tuple[list[str] | list[list[int]], str]:
    """The texts or the token-id lists, and the field they came in."""
    if request.texts and request.token_ids:
        raise InvalidRequestError("texts", "texts: give either texts or token_ids, not both", code="invalid_value")
    if request.token_ids:
        ids = [list(item.ids) for item in request.token_ids]
        if (empty := next((i for i, item in enumerate(ids) if not item), None)) is not None:
            raise InvalidRequestError(f"token_ids[{empty}]", f"token_ids[{empty}]: must hold at least one id",
                                      code="empty_input")
        return ids, "token_ids"
    if not request.texts:
        raise InvalidRequestError("texts", "texts: field required (or token_ids)", code="empty_input")
    return list(request.texts), "texts"


def _packed(values: np.ndarray, encoding: str) -> bytes:
    return np.ascontiguousarray(values, dtype=encoding).tobytes()


def embedding(e: Embedding, dense: str, colbert: str) -> pb.Embedding:
    """One input's outputs, vectors packed in the `dense` and `colbert` numpy encodings."""
    out = pb.Embedding(n_tokens=e.n_tokens, truncated=e.truncated)
    if e.dense is not None:
        out.dense = _packed(e.dense, dense)
    if e.sparse_values is not None:
        out.sparse_ids.extend(np.asarray(e.sparse_indices).tolist())
        out.sparse_weights = _packed(e.sparse_values, "<f4")
        if e.sparse_tokens is not None:
            out.sparse_tokens.extend(e.sparse_tokens)
    if e.colbert is not None:
        out.colbert = _packed(e.colbert, colbert)
        out.colbert_rows = e.colbert.shape[0]
    return out


async def encode(service: EmbeddingService, request: pb.EncodeRequest, call: Call) -> pb.EncodeResponse:
    """`Encode`: the asked-for outputs of every input, in order."""
    inputs, field = _inputs(request)
    service.check_count(inputs, field)
    options = {name: getattr(request, name) if request.HasField(name) else getattr(EncodeOptions, name)
               for name in _OUTPUTS}
    dense, colbert = (_enum(ENCODINGS, request.dense_encoding, "dense_encoding", "<f4"),
                      _enum(ENCODINGS, request.colbert_encoding, "colbert_encoding", "<f4"))
    result = await service.encode(
        inputs, field, priority=priority_of(request.priority, call),
        overflow=_enum(OVERFLOWS, request.overflow, "overflow", EncodeOptions.overflow),
        input_type=_enum(INPUT_TYPES, request.input_type, "input_type"), **options)
    info = await service.model_info()
    return pb.EncodeResponse(embeddings=[embedding(e, dense, colbert) for e in result.embeddings], dim=info["dim"],
                             dense_encoding=request.dense_encoding, colbert_encoding=request.colbert_encoding,
                             prompt_tokens=result.prompt_tokens, model=service.served_model_name)


def _weights(request: pb.ScoreRequest) -> ScoreWeights:
    """The hybrid weights (unset: 1, 1, 1), checked as `POST /score` checks them."""
    if not request.HasField("weights"):
        return ScoreWeights()
    w = request.weights
    for name in ("dense", "sparse", "colbert"):
        if getattr(w, name) < 0:
            raise InvalidRequestError(f"weights.{name}", f"weights.{name}: must be >= 0", code="invalid_value")
    if w.dense + w.sparse <= 0:
        raise InvalidRequestError("weights", "weights: dense or sparse must be positive (the sparse+dense score is "
                                  "their weighted mean)", code="invalid_value")
    return ScoreWeights(dense=w.dense, sparse=w.sparse, colbert=w.colbert)


async def score(service: EmbeddingService, request: pb.ScoreRequest, call: Call) -> pb.ScoreResponse:
    """`Score`: every score of each passage against the query (as `POST /score`)."""
    if not request.passages:
        raise InvalidRequestError("passages", "passages: must not be empty", code="empty_input")
    scores, result = await service.score(request.query, list(request.passages), _weights(request),
                                         truncate=request.truncate if request.HasField("truncate") else True,
                                         priority=priority_of(request.priority, call))
    return pb.ScoreResponse(scores=[pb.PassageScore(dense=s["dense"], sparse=s["sparse"], colbert=s["colbert"],
                                                    sparse_dense=s["sparse+dense"],
                                                    colbert_sparse_dense=s["colbert+sparse+dense"])
                                    for s in scores],
                            prompt_tokens=result.prompt_tokens, model=service.served_model_name)


async def info(service: EmbeddingService, request: pb.InfoRequest, call: Call) -> pb.InfoResponse:
    """`Info`: the served model, its identity and the request limits."""
    facts = await service.model_info()
    return pb.InfoResponse(model=facts["model"], served_model_name=service.served_model_name, version=__version__,
                           dim=facts["dim"], vocab_size=facts["vocab_size"], max_length=facts["max_length"],
                           dtype=facts["dtype"], device=str(facts["device"]),
                           fingerprint=facts["fingerprint"],
                           max_texts_per_request=service.limits.max_texts_per_request,
                           max_queue_tokens=facts["batching"]["max_queue_tokens"])
