"""TEI's gRPC API (`tei.v1`, `protos/tei.proto`) over the service: each message to a service call and its
answer back, as the HTTP TEI routes do for JSON (`http/routes/tei.py`).

TEI's requests carry one input each; `truncate` defaults to false (an over-long input is INVALID_ARGUMENT),
`normalize` to true, `truncation_direction` to right, and `prompt_name` picks the configured instruction
(`query` or `passage`). `Predict` and `Rerank` answer UNIMPLEMENTED: BGE-M3 has no classifier or reranker
head (`bge_m3.v1.Embedder/Score` scores passages).
"""

from __future__ import annotations

import time

import numpy as np

from .. import __version__
from ..gateway.service import EmbeddingService
from ..gateway.tei import check_tei_options, parse_input_type, tei_info
from ..serving.schemas import EncodeResult
from .calls import Call
from .errors import UnimplementedError
from .protos import tei_pb2 as pb

NO_CLASSIFIER = UnimplementedError("Predict: this server has no classifier head (BGE-M3 is an embedding model); "
                                   "use Embed, EmbedSparse or EmbedAll")
NO_RERANKER = UnimplementedError("Rerank: this server has no reranker head; bge_m3.v1.Embedder/Score gives "
                                 "BGE-M3's dense, sparse, ColBERT and hybrid scores")

_NS_PER_MS = 1_000_000


def metadata(text: str, result: EncodeResult, started: float) -> pb.Metadata:
    """TEI's per-answer `Metadata` from the result's timings (`started`: `time.perf_counter()` at receipt)."""
    t = result.timings
    return pb.Metadata(compute_chars=len(text), compute_tokens=result.prompt_tokens,
                       total_time_ns=int((time.perf_counter() - started) * 1e9),
                       tokenization_time_ns=int(t.tokenization_ms * _NS_PER_MS),
                       queue_time_ns=int(t.queue_ms * _NS_PER_MS), inference_time_ns=int(t.inference_ms * _NS_PER_MS))


async def _encode(service: EmbeddingService, request: pb.EmbedRequest | pb.EmbedSparseRequest | pb.EmbedAllRequest,
                  call: Call, *, normalize: bool | None = None, dimensions: int | None = None,
                  **outputs: bool) -> EncodeResult:
    """One TEI input through the service, its options checked as over HTTP."""
    inputs = service.inputs(request.inputs, "inputs")
    check_tei_options(normalize=normalize,
                      left=request.truncation_direction == pb.TruncationDirection.TRUNCATION_DIRECTION_LEFT)
    await service.check_dimensions(dimensions)
    input_type = parse_input_type(request.prompt_name if request.HasField("prompt_name") else None, "prompt_name")
    return await service.encode(inputs, "inputs", truncate=request.truncate, input_type=input_type,
                                priority=call.priority or "interactive", **outputs)


async def embed(service: EmbeddingService, request: pb.EmbedRequest, call: Call) -> pb.EmbedResponse:
    """`Embed`: the dense vector."""
    started = time.perf_counter()
    result = await _encode(service, request, call, dense=True, sparse=False,
                           normalize=request.normalize if request.HasField("normalize") else None,
                           dimensions=request.dimensions if request.HasField("dimensions") else None)
    dense = np.asarray(result.embeddings[0].dense, dtype=np.float32)
    return pb.EmbedResponse(embeddings=dense.tolist(), metadata=metadata(request.inputs, result, started))


async def embed_sparse(service: EmbeddingService, request: pb.EmbedSparseRequest,
                       call: Call) -> pb.EmbedSparseResponse:
    """`EmbedSparse`: the sparse lexical weights, by token id."""
    started = time.perf_counter()
    result = await _encode(service, request, call, dense=False, sparse=True)
    e = result.embeddings[0]
    pairs = [pb.SparseValue(index=i, value=v)
             for i, v in zip(np.asarray(e.sparse_indices).tolist(), np.asarray(e.sparse_values).tolist())]
    return pb.EmbedSparseResponse(sparse_embeddings=pairs, metadata=metadata(request.inputs, result, started))


async def embed_all(service: EmbeddingService, request: pb.EmbedAllRequest, call: Call) -> pb.EmbedAllResponse:
    """`EmbedAll`: BGE-M3's ColBERT vectors, one per token after `<s>` (as HTTP's `/embed_all`)."""
    started = time.perf_counter()
    result = await _encode(service, request, call, dense=False, sparse=False, colbert=True)
    rows = np.asarray(result.embeddings[0].colbert, dtype=np.float32).tolist()
    return pb.EmbedAllResponse(token_embeddings=[pb.TokenEmbedding(embeddings=row) for row in rows],
                               metadata=metadata(request.inputs, result, started))


async def tokenize(service: EmbeddingService, request: pb.EncodeRequest, call: Call) -> pb.EncodeResponse:
    """`Tokenize`: the input's tokens (id, text, special, character offsets)."""
    input_type = parse_input_type(request.prompt_name if request.HasField("prompt_name") else None, "prompt_name")
    [tokens] = await service.tokenize([request.inputs], request.add_special_tokens, input_type)
    return pb.EncodeResponse(tokens=[pb.SimpleToken(**token) for token in tokens])


async def decode(service: EmbeddingService, request: pb.DecodeRequest, call: Call) -> pb.DecodeResponse:
    """`Decode`: token ids back to text."""
    [text] = await service.decode(list(request.ids), request.skip_special_tokens)
    return pb.DecodeResponse(text=text)


async def info(service: EmbeddingService, request: pb.InfoRequest, call: Call) -> pb.InfoResponse:
    """`Info`: TEI's facts (as `/info`'s TEI fields)."""
    facts = tei_info(await service.model_info(), service.limits)
    return pb.InfoResponse(version=__version__, model_id=facts["model_id"], model_sha=facts["model_sha"],
                           model_dtype=facts["model_dtype"], model_type=pb.ModelType.MODEL_TYPE_EMBEDDING,
                           max_concurrent_requests=facts["max_concurrent_requests"],
                           max_input_length=facts["max_input_length"], max_batch_tokens=facts["max_batch_tokens"],
                           max_batch_requests=facts["max_batch_requests"],
                           max_client_batch_size=facts["max_client_batch_size"],
                           tokenization_workers=facts["tokenization_workers"])


async def predict(service: EmbeddingService, request: object, call: Call) -> None:
    """`Predict`, `PredictPair` and their streams: UNIMPLEMENTED."""
    raise NO_CLASSIFIER


async def rerank(service: EmbeddingService, request: object, call: Call) -> None:
    """`Rerank` and `RerankStream`: UNIMPLEMENTED."""
    raise NO_RERANKER
