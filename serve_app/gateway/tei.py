"""Text-embeddings-inference's rules, the same over HTTP (`http/routes/tei.py`) and gRPC (`grpc/tei.py`):
its `/info` facts, and the TEI options this server refuses (naming them) rather than ignores."""

from __future__ import annotations

from typing import cast

from ..core.config import InputType
from ..serving.config import RequestLimits
from .errors import InvalidRequestError

INPUT_TYPES: tuple[str, ...] = ("query", "passage")


def tei_info(info: dict, limits: RequestLimits) -> dict:
    """TEI's info fields, from the model replica's facts and the ingress limits."""
    return {
        "model_id": info["model"], "model_sha": info.get("revision"), "model_dtype": info["dtype"],
        "model_type": {"embedding": {"pooling": "cls"}}, "max_input_length": info["max_length"],
        # TEI's max_batch_tokens bounds a batch and so a request: here that is the queue budget, not the
        # forward-pass one (see docs/serving.md, "Two token budgets").
        "max_batch_tokens": info["batching"]["max_queue_tokens"],
        "max_batch_requests": limits.max_requests_per_model_call,
        "max_client_batch_size": limits.max_texts_per_request, "max_concurrent_requests": limits.max_pending_requests,
        "auto_truncate": False, "tokenization_workers": 1,
    }


def check_tei_options(*, normalize: bool | None, left: bool) -> None:
    """`InvalidRequestError` for what TEI offers and BGE-M3 served here cannot do: unnormalized dense vectors
    (`normalize` false) and cutting an over-long input on the left (`left`, TEI's `truncation_direction`)."""
    if normalize is False:
        raise InvalidRequestError("normalize", "normalize: only normalized vectors are served (BGE-M3's dense "
                                  "output)", code="unsupported")
    if left:
        raise InvalidRequestError("truncation_direction", "truncation_direction: only right truncation is "
                                  "supported", code="unsupported")


def parse_input_type(value: str | None, param: str) -> InputType | None:
    """A `prompt_name` (or input type) sent as free text: None when absent or empty, else query or passage
    (the sides whose instruction is configured); anything else `InvalidRequestError` naming `param`."""
    if not value:
        return None
    if value not in INPUT_TYPES:
        raise InvalidRequestError(param, f"{param}: must be one of {', '.join(map(repr, INPUT_TYPES))} (the "
                                  "configured instructions)", code="invalid_value")
    return cast(InputType, value)
