"""OpenAI-compatible routes: `POST /v1/embeddings` (dense vectors) and `GET /v1/models`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ...gateway.errors import InvalidRequestError
from .. import serialization
from ..fast_path import hot
from ..protocol import OpenAIEmbeddingRequest
from .common import AUTH, ENCODE_ERRORS, PriorityHeader, ServiceDep, error_responses, json_response, priority_of

router = APIRouter()
# `args.openai_token_ids` is off by default: LangChain's OpenAIEmbeddings (check_embedding_ctx_length=True, its
# default) sends tiktoken's ids as `input`, which BGE-M3 would embed as its own and answer wrong vectors.
TOKEN_IDS_OFF = ("input: token ids are not taken on /v1/embeddings, as they may be another tokenizer's: "
                 "LangChain's OpenAIEmbeddings sends tiktoken's ids unless created with "
                 "check_embedding_ctx_length=False (set it, to send texts); to send BGE-M3's own ids (from "
                 "/tokenize) here, the service must set args.openai_token_ids: true (/encode's token_ids and "
                 "the TEI routes take them as they are)")


@router.post("/v1/embeddings", responses=ENCODE_ERRORS)
@hot
async def openai_embeddings(body: OpenAIEmbeddingRequest, service: ServiceDep,
                            x_priority: PriorityHeader = None) -> Response:
    """OpenAI-compatible dense embeddings."""
    priority = priority_of(body.priority, x_priority)
    texts = service.inputs(body.input, "input")
    if not service.openai_token_ids and not isinstance(texts[0], str):
        raise InvalidRequestError("input", TOKEN_IDS_OFF, code="token_ids_off")
    await service.check_dimensions(body.dimensions)
    result = await service.encode(texts, "input", dense=True, sparse=False, overflow=body.overflow,
                                  input_type=body.input_type, priority=priority)
    return json_response(serialization.openai_embeddings(result, service.served_model_name, body.encoding_format,
                                                         body.dtype), result)


@router.get("/v1/models", responses=error_responses(429, *AUTH))
async def models(service: ServiceDep) -> Response:
    """The served model, OpenAI style, with the instructions put before queries and passages."""
    instructions = (await service.model_info())["instructions"]
    return json_response({"object": "list", "data": [
        {"id": service.served_model_name, "object": "model", "created": 0, "owned_by": "bge-m3-ray",
         "instructions": instructions}]})
