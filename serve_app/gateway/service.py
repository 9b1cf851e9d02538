"""What every transport asks of the model deployment, behind one object: `EmbeddingService`.

Owns everything between a validated request and the model replica: input checks (count limits,
`dimensions`), encode calls (coalesced, streamed and cancelled by `dispatch`) with the request deadline,
each in its priority's lane (bulk: its own longer deadline, and at most its share of the pending requests),
scores, tokenize/decode, the cached model facts and the health verdict (`health`). It knows nothing of
HTTP or gRPC: its failures are typed (`core.errors`, `gateway.errors`), each naming the request field at
fault as the caller spelled it, and each transport maps them in one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from ray.serve.handle import DeploymentHandle

from ..core.config import InputType
from ..core.errors import BgeM3Error, RequestTimeoutError, TextError, TooManyInputsError
from ..core.inputs import are_token_ids, as_inputs
from ..core.scoring import ScoreWeights, compute_scores
from ..serving.config import AppArgs
from ..serving.schemas import EncodeRequest, EncodeResult, Priority
from .access import PendingLimit
from .dispatch import ModelDispatcher, call_model
from .errors import InvalidRequestError, named
from .health import ModelHealth


class EmbeddingService:
    """One ingress replica's client of the model deployment, with the app's settings."""

    def __init__(self, model: DeploymentHandle, args: AppArgs):
        self.served_model_name = args.served_model_name
        self.limits = args.limits
        self.openai_token_ids = args.openai_token_ids
        self._model = model
        self._info: dict | None = None
        self._dispatch = ModelDispatcher(model, args.limits)
        self.health = ModelHealth(model, args.limits.health_timeout_s)
        # Counted here, not in a transport: HTTP and gRPC requests share one admission limit per replica, and
        # any transport's bulk requests the one bulk allowance.
        self.admission = PendingLimit(args.limits.max_pending_requests)
        self.bulk = PendingLimit(args.limits.max_pending_bulk, "bulk requests",
                                 "max_pending_requests x bulk_pending_share")

    # --- input checks -----------------------------------------------------------------------------

    def inputs(self, value: str | list[str] | list[int] | list[list[int]], param: str) -> list[str] | list[list[int]]:
        """Any of the four input shapes as a list of texts or of token-id lists (one list of ids is one input);
        `InvalidRequestError` when empty, `TooManyInputsError` past the count limit."""
        inputs = as_inputs(value)
        if not inputs:
            raise InvalidRequestError(param, f"{param}: must not be empty", code="empty_input")
        self.check_count(inputs, param)
        return inputs

    def check_count(self, items: list, param: str) -> None:
        """`TooManyInputsError` when a request holds more than `max_texts_per_request` items."""
        if len(items) > self.limits.max_texts_per_request:
            raise TooManyInputsError(param, len(items), self.limits.max_texts_per_request, "texts")

    async def check_dimensions(self, dimensions: int | None) -> None:
        """`dimensions` may only restate the model's width (BGE-M3 has no Matryoshka truncation)."""
        if dimensions is not None and dimensions != (dim := (await self.model_info())["dim"]):
            raise InvalidRequestError("dimensions", f"dimensions: this model only returns {dim} dimensions",
                                      code="unsupported_dimensions")

    # --- encoding ---------------------------------------------------------------------------------

    def shed(self, priority: Priority) -> BgeM3Error | None:
        """The refusal (429) the model replicas' last refusals already decide for an encode request of `priority`
        arriving now, or None to serve it (`shedding.RefusalGate`). A transport asks once per request, as
        early as it can: HTTP before the body is read, so a retry storm costs neither a parse nor a call."""
        now = time.time()
        return self._dispatch.gate.refusal(priority, now + self.limits.timeout_s(priority), now)

    @contextmanager
    def lane(self, priority: Priority) -> Iterator[None]:
        """Hold a bulk request's place in the bulk allowance while this block runs (`OverloadedError` at once
        when it is used up); interactive requests have no allowance of their own."""
        if priority != "bulk":
            yield
            return
        with self.bulk.held():
            yield

    async def encode(self, inputs: list[str] | list[list[int]], param: str = "texts", *,
                     priority: Priority = "interactive", **outputs: Any) -> EncodeResult:
        """`EncodeRequest(texts or token_ids, **outputs)` through the coalescing queue, in `priority`'s lane
        and with its deadline; a failure names an input as `param[i]`."""
        with self.lane(priority):
            return await self._encode(inputs, param, priority, **outputs)

    async def _encode(self, inputs: list[str] | list[list[int]], param: str, priority: Priority,
                      **outputs: Any) -> EncodeResult:
        timeout = self.limits.timeout_s(priority)
        # An absolute deadline (wall clock: the model replica may be on another node) counts the time spent
        # here and in transit, and holds across re-sends; past it the model replica drops the request's inputs
        # before they reach the device. A caller that leaves (timeout, disconnect) cancels it (`dispatch`).
        field = "token_ids" if are_token_ids(inputs) else "texts"
        request = EncodeRequest(**{field: inputs}, deadline=time.time() + timeout, priority=priority, **outputs)
        try:
            return await asyncio.wait_for(self._dispatch.encode(request), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(timeout) from None
        except Exception as exc:
            raise named(exc, param) from None

    async def score(self, query: str, passages: list[str], weights: ScoreWeights, *, truncate: bool,
                    priority: Priority = "interactive") -> tuple[list[dict[str, float]], EncodeResult]:
        """Every score of each passage against the query, from all outputs of the query encoded as a query
        and the passages as passages (each side with its configured instruction), in `priority`'s lane."""
        self.check_count([query, *passages], "passages")
        outputs = {"dense": True, "sparse": True, "colbert": True, "truncate": truncate}
        with self.lane(priority):  # one request, one place in the lane, though two encode calls
            first, rest = await asyncio.gather(
                self._encode([query], "query", priority, input_type="query", **outputs),
                self._encode(passages, "passages", priority, input_type="passage", **outputs))
        scores = [compute_scores(first.embeddings[0], passage, weights) for passage in rest.embeddings]
        return scores, rest.model_copy(update={"prompt_tokens": first.prompt_tokens + rest.prompt_tokens})

    # --- tokenizer --------------------------------------------------------------------------------

    async def tokenize(self, texts: list[str], add_special_tokens: bool,
                       input_type: InputType | None = None) -> list[list[dict]]:
        """Each text's tokens, from the model replica's tokenizer (after `input_type`'s instruction)."""
        self.check_count(texts, "inputs")
        try:
            return await self._call("tokenize", texts, add_special_tokens, input_type)
        except Exception as exc:
            raise named(exc, "inputs") from None

    async def decode(self, ids: list[int] | list[list[int]], skip_special_tokens: bool) -> list[str]:
        """One text per list of ids (`ids` may be a single list); an id outside the vocabulary is named as
        `ids[i][j]` (or `ids[j]` in a single list)."""
        flat = not ids or not isinstance(ids[0], list)
        rows = [cast("list[int]", ids)] if flat else cast("list[list[int]]", ids)
        self.check_count(rows, "ids")
        try:
            return await self._call("decode", rows, skip_special_tokens)
        except Exception as exc:
            raise (named(exc, "ids") if not flat else _in_flat(exc, "ids")) from None

    # --- model facts ------------------------------------------------------------------------------

    async def model_info(self, *, fresh: bool = False) -> dict:
        """The model replica's `info()`: cached after the first answer (model, dim, vocabulary do not
        change); `fresh` asks again, for the live counts."""
        if self._info is None or fresh:
            self._info = await self._call("info", timeout=self.limits.health_timeout_s)
        return self._info

    async def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """One call of the model's `method` within `timeout` (default: the request timeout)."""
        timeout = timeout or self.limits.request_timeout_s
        try:
            return await call_model(self._model, method, *args, timeout=timeout)
        except TimeoutError:
            raise RequestTimeoutError(timeout) from None


def _in_flat(exc: BaseException, field: str) -> BaseException:
    """`exc` naming an input of a request whose `field` holds a single input (no index of its own)."""
    return exc.in_field(field, index=None) if isinstance(exc, TextError) else exc
