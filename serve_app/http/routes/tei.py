"""text-embeddings-inference (TEI) compatible routes, so TEI clients work unchanged.

| TEI route | here |
|---|---|
| `POST /embed`, `POST /` | dense vectors, `[[float]]` per input |
| `POST /embed_sparse` | sparse weights, `[[{"index": token_id, "value": weight}]]` |
| `POST /embed_all` | BGE-M3's ColBERT vectors (one per token after `<s>`), `[[[float]]]` |
| `POST /tokenize` / `POST /decode` | the model's tokenizer |
| `GET /info` | TEI's fields (`gateway.tei.tei_info`), next to this server's own (`routes.ops`) |

Every request still goes through the service's limits, batching and error mapping.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ...gateway.service import EmbeddingService
from ...gateway.tei import check_tei_options
from .. import serialization
from ..protocol import TeiDecodeRequest, TeiEmbedRequest, TeiTokenizeRequest
from .common import ENCODE_ERRORS, PriorityHeader, ServiceDep, json_response, priority_of

router = APIRouter()


async def _texts(body: TeiEmbedRequest, service: EmbeddingService) -> list[str] | list[list[int]]:
    """The inputs (texts or token-id lists), once the TEI options this server cannot honour are refused (422)
    rather than ignored."""
    texts = service.inputs(body.inputs, "inputs")
    check_tei_options(normalize=body.normalize, left=body.truncation_direction in ("left", "Left"))
    await service.check_dimensions(body.dimensions)
    return texts


@router.post("/", responses=ENCODE_ERRORS)
@router.post("/embed", responses=ENCODE_ERRORS)  # the lower decorator registers first: /embed, then /
async def tei_embed(body: TeiEmbedRequest, service: ServiceDep, x_priority: PriorityHeader = None) -> Response:
    """Dense vectors, one list per input (TEI `POST /embed`)."""
    result = await service.encode(await _texts(body, service), "inputs", dense=True, sparse=False,
                                  truncate=bool(body.truncate), input_type=body.prompt_name,
                                  priority=priority_of(None, x_priority))
    return json_response([e.dense for e in result.embeddings], result)


@router.post("/embed_sparse", responses=ENCODE_ERRORS)
async def tei_embed_sparse(body: TeiEmbedRequest, service: ServiceDep, x_priority: PriorityHeader = None) -> Response:
    """Sparse lexical weights as `{"index", "value"}` pairs (TEI `POST /embed_sparse`)."""
    result = await service.encode(await _texts(body, service), "inputs", dense=False, sparse=True,
                                  truncate=bool(body.truncate), input_type=body.prompt_name,
                                  priority=priority_of(None, x_priority))
    return json_response(serialization.tei_sparse(result), result)


@router.post("/embed_all", responses=ENCODE_ERRORS)
async def tei_embed_all(body: TeiEmbedRequest, service: ServiceDep, x_priority: PriorityHeader = None) -> Response:
    """Per-token vectors: BGE-M3's ColBERT multi-vector (TEI `POST /embed_all`)."""
    result = await service.encode(await _texts(body, service), "inputs", dense=False, sparse=False, colbert=True,
                                  truncate=bool(body.truncate), input_type=body.prompt_name,
                                  priority=priority_of(None, x_priority))
    return json_response([e.colbert for e in result.embeddings], result)


@router.post("/tokenize", responses=ENCODE_ERRORS)
async def tokenize(body: TeiTokenizeRequest, service: ServiceDep) -> Response:
    """Each input's tokens: id, text, special, start/stop character offsets (TEI `POST /tokenize`)."""
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    return json_response(await service.tokenize(texts, body.add_special_tokens, body.prompt_name))


@router.post("/decode", responses=ENCODE_ERRORS)
async def decode(body: TeiDecodeRequest, service: ServiceDep) -> Response:
    """Token ids back to text, one string per id list (TEI `POST /decode`)."""
    return json_response(await service.decode(body.ids, body.skip_special_tokens))
