"""text-embeddings-inference (TEI) compatible routes, so TEI clients work unchanged.

| TEI route | here |
|---|---|
| `POST /embed`, `POST /` | dense vectors, `[[float]]` per input |
| `POST /embed_sparse` | sparse weights, `[[{"index": token_id, "value": weight}]]` |
| `POST /embed_all` | BGE-M3's ColBERT vectors (one per token after `<s>`), `[[[float]]]` |
| `POST /tokenize` / `POST /decode` | the model's tokenizer |
| `GET /info` | TEI's fields, next to this server's own |

Mixed into `Ingress`; every request still goes through its limits, batching and error mapping.
"""

from __future__ import annotations

from fastapi.responses import Response

from ..serving.config import RequestLimits
from . import serialization
from .errors import ApiError, to_api_error
from .protocol import TeiDecodeRequest, TeiEmbedRequest, TeiTokenizeRequest


def tei_info(info: dict, limits: RequestLimits) -> dict:
    """TEI's `/info` fields, from the model replica's facts and the ingress limits."""
    return {
        "model_id": info["model"], "model_sha": info.get("revision"), "model_dtype": info["dtype"],
        "model_type": {"embedding": {"pooling": "cls"}}, "max_input_length": info["max_length"],
        # TEI's max_batch_tokens bounds a batch and so a request: here that is the queue budget, not the
        # forward-pass one (see README, "Two token budgets").
        "max_batch_tokens": info["batching"]["max_queue_tokens"],
        "max_batch_requests": limits.max_requests_per_model_call,
        "max_client_batch_size": limits.max_texts_per_request, "max_concurrent_requests": limits.max_pending_requests,
        "auto_truncate": False, "tokenization_workers": 1,
    }


class TeiRoutes:
    """The TEI routes of `Ingress` (uses its `_encode`, `_texts`, `_check_dimensions`, `_check_count`,
    `_call_model` and `_model_info`)."""

    async def _tei_texts(self, body: TeiEmbedRequest) -> list[str]:
        texts = self._texts(body.inputs, "inputs")
        if body.normalize is False:
            raise ApiError(422, "normalize: only normalized vectors are served (BGE-M3's dense output)",
                           param="normalize", code="unsupported")
        if body.prompt_name is not None:
            raise ApiError(422, "prompt_name: this server has no prompts (BGE-M3 uses none)", param="prompt_name",
                           code="unsupported")
        if body.truncation_direction in ("left", "Left"):
            raise ApiError(422, "truncation_direction: only right truncation is supported",
                           param="truncation_direction", code="unsupported")
        await self._check_dimensions(body.dimensions)
        return texts

    async def tei_embed(self, body: TeiEmbedRequest) -> Response:
        """Dense vectors, one list per input (TEI `POST /embed`)."""
        result = await self._encode(await self._tei_texts(body), "inputs", dense=True, truncate=bool(body.truncate))
        return self._respond([e.dense for e in result.embeddings], result)

    async def tei_embed_sparse(self, body: TeiEmbedRequest) -> Response:
        """Sparse lexical weights as `{"index", "value"}` pairs (TEI `POST /embed_sparse`)."""
        result = await self._encode(await self._tei_texts(body), "inputs", dense=False, sparse=True,
                                    truncate=bool(body.truncate))
        return self._respond([[{"index": int(i), "value": float(v)} for i, v in zip(e.sparse_indices, e.sparse_values)]
                              for e in result.embeddings], result)

    async def tei_embed_all(self, body: TeiEmbedRequest) -> Response:
        """Per-token vectors: BGE-M3's ColBERT multi-vector (TEI `POST /embed_all`)."""
        result = await self._encode(await self._tei_texts(body), "inputs", dense=False, colbert=True,
                                    truncate=bool(body.truncate))
        return self._respond([e.colbert for e in result.embeddings], result)

    async def tokenize(self, body: TeiTokenizeRequest) -> Response:
        """Each input's tokens: id, text, special, start/stop character offsets (TEI `POST /tokenize`)."""
        texts = self._texts(body.inputs, "inputs", allow_empty=True)
        if body.prompt_name is not None:
            raise ApiError(422, "prompt_name: this server has no prompts", param="prompt_name", code="unsupported")
        try:
            tokens = await self._call_model("tokenize", texts, body.add_special_tokens,
                                            timeout=self._limits.request_timeout_s)
        except Exception as exc:
            raise to_api_error(exc, texts_param="inputs") from None
        return Response(serialization.dumps(tokens), media_type="application/json")

    async def decode(self, body: TeiDecodeRequest) -> Response:
        """Token ids back to text, one string per id list (TEI `POST /decode`)."""
        nested = bool(body.ids) and isinstance(body.ids[0], list)
        ids = body.ids if nested else [body.ids]
        self._check_count(ids, "ids")
        vocab = (await self._model_info())["vocab_size"]
        for row, seq in enumerate(ids):
            for col, token_id in enumerate(seq):
                if not 0 <= token_id < vocab:
                    param = f"ids[{row}][{col}]" if nested else f"ids[{col}]"
                    raise ApiError(422, f"{param}: {token_id} is outside the vocabulary [0, {vocab})", param=param,
                                   code="invalid_token_id")
        texts = await self._call_model("decode", ids, body.skip_special_tokens, timeout=self._limits.request_timeout_s)
        return Response(serialization.dumps(texts), media_type="application/json")
