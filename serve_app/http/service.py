"""What the HTTP routes ask of the model deployment, behind one object: `EmbeddingService`.

Owns everything between a validated request body and the model replica: input checks (count limits,
`dimensions`, token ids), encode calls (coalesced, streamed and cancelled by `dispatch`), deadlines,
the cached model facts, tokenize/decode calls and the health verdict (the model's answer joined with
the Serve controller's view). It knows nothing of routes or FastAPI;
its failures are `ApiError`s, or the model call's own exception where the app's error handlers map it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..core.config import InputType
from ..core.inputs import are_token_ids
from ..core.scoring import ScoreWeights, compute_scores
from ..serving.config import RequestLimits
from ..serving.schemas import EncodeRequest, EncodeResult
from .dispatch import ModelDispatcher
from .errors import RETRY_AFTER_S, ApiError, to_api_error


class EmbeddingService:
    """One ingress replica's client of the model deployment, with its limits."""

    def __init__(self, model: DeploymentHandle, served_model_name: str, limits: RequestLimits, *,
                 openai_token_ids: bool = False):
        self.served_model_name = served_model_name
        self.limits = limits
        self.openai_token_ids = openai_token_ids
        self._model = model
        self._info: dict | None = None
        self._dispatch = ModelDispatcher(model, limits)

    # --- input checks -----------------------------------------------------------------------------

    def inputs(self, value: str | list[str] | list[int] | list[list[int]], param: str) -> list[str] | list[list[int]]:
        """`protocol.Inputs` as a list of texts or of token-id lists (one list of ids is one input); 422 when
        empty, 413 past the count limit."""
        if isinstance(value, list) and value and isinstance(value[0], int):
            return [value]
        return cast("list[str] | list[list[int]]", self.texts(cast("str | list[str]", value), param))

    def texts(self, value: str | list[str], param: str, *, allow_empty: bool = False) -> list[str]:
        """One text or a list of them, as a list: 422 when empty (unless allowed), 413 past the count limit."""
        texts = [value] if isinstance(value, str) else value
        if not texts and not allow_empty:
            raise ApiError(422, f"{param}: must not be empty", param=param, code="empty_input")
        self.check_count(texts, param)
        return texts

    def check_count(self, items: list, param: str) -> None:
        """413 when a request holds more than `max_texts_per_request` items."""
        if len(items) > self.limits.max_texts_per_request:
            raise ApiError(413, f"{param} has {len(items)} texts, more than the limit of "
                                f"{self.limits.max_texts_per_request}", param=param, code="too_many_texts")

    async def check_dimensions(self, dimensions: int | None) -> None:
        """`dimensions` may only restate the model's width (BGE-M3 has no Matryoshka truncation)."""
        if dimensions is not None and dimensions != (dim := (await self.model_info())["dim"]):
            raise ApiError(422, f"dimensions: this model only returns {dim} dimensions", param="dimensions",
                           code="unsupported_dimensions")

    # --- encoding ---------------------------------------------------------------------------------

    async def encode(self, texts: list[str] | list[list[int]], texts_param: str = "texts",
                     **outputs: Any) -> EncodeResult:
        """`EncodeRequest(texts or token_ids, **outputs)` through the coalescing queue, with the request
        deadline; any failure becomes the `ApiError` the client sees, naming a failed text (or id list) as
        `texts_param[i]`."""
        timeout = self.limits.request_timeout_s
        try:
            # An absolute deadline (wall clock: the model replica may be on another node) counts the time
            # spent here and in transit, and holds across re-sends; past it the model replica drops the
            # request's texts before they reach the device. A caller that leaves (timeout, disconnect)
            # cancels it (`dispatch`).
            field = "token_ids" if are_token_ids(texts) else "texts"
            request = EncodeRequest(**{field: texts}, deadline=time.time() + timeout, **outputs)
            result = await asyncio.wait_for(self._dispatch.encode(request), timeout)
            if isinstance(result, BaseException):
                raise result
            return result
        except asyncio.TimeoutError:
            raise to_api_error(TimeoutError(), texts_param=texts_param) from None
        except Exception as exc:
            raise to_api_error(exc, texts_param=texts_param) from None

    async def score(self, query: str, passages: list[str], weights: ScoreWeights, *,
                    truncate: bool) -> tuple[list[dict[str, float]], EncodeResult]:
        """Every score of each passage against the query, from all outputs of the query encoded as a query
        and the passages as passages (each side with its configured instruction)."""
        self.check_count([query, *passages], "passages")
        outputs = {"dense": True, "sparse": True, "colbert": True, "truncate": truncate}
        first, rest = await asyncio.gather(self.encode([query], "query", input_type="query", **outputs),
                                           self.encode(passages, "passages", input_type="passage", **outputs))
        scores = [compute_scores(first.embeddings[0], passage, weights) for passage in rest.embeddings]
        return scores, rest.model_copy(update={"prompt_tokens": first.prompt_tokens + rest.prompt_tokens})

    # --- tokenizer --------------------------------------------------------------------------------

    async def tokenize(self, texts: list[str], add_special_tokens: bool,
                       input_type: InputType | None = None) -> list[list[dict]]:
        """Each text's tokens, from the model replica's tokenizer (after `input_type`'s instruction)."""
        try:
            return await self._call_model("tokenize", texts, add_special_tokens, input_type,
                                          timeout=self.limits.request_timeout_s)
        except Exception as exc:
            raise to_api_error(exc, texts_param="inputs") from None

    async def decode(self, ids: list[int] | list[list[int]], skip_special_tokens: bool) -> list[str]:
        """One text per list of ids (`ids` may be a single list); 422 naming the first id outside the vocabulary."""
        nested = bool(ids) and isinstance(ids[0], list)
        rows = cast("list[list[int]]", ids) if nested else [cast("list[int]", ids)]
        self.check_count(rows, "ids")
        vocab = (await self.model_info())["vocab_size"]
        for row, seq in enumerate(rows):
            for col, token_id in enumerate(seq):
                if not 0 <= token_id < vocab:
                    param = f"ids[{row}][{col}]" if nested else f"ids[{col}]"
                    raise ApiError(422, f"{param}: {token_id} is outside the vocabulary [0, {vocab})", param=param,
                                   code="invalid_token_id")
        return await self._call_model("decode", rows, skip_special_tokens, timeout=self.limits.request_timeout_s)

    # --- model facts and health -------------------------------------------------------------------

    async def model_info(self, *, fresh: bool = False) -> dict:
        """The model replica's `info()`: cached after the first answer (model, dim, vocabulary do not
        change); `fresh` asks again, for the live counts."""
        if self._info is None or fresh:
            self._info = await self._call_model("info", timeout=self.limits.health_timeout_s)
        return self._info

    async def health(self) -> dict:
        """`{"status": "ok" | "degraded", "model": <controller's view or None>}`: degraded while a model
        replica is missing or starting. 503 (`ApiError`) with the reason, Serve's own message for a failed
        model deployment included, when the model does not answer."""
        info, status = await asyncio.gather(self._call_model("info", timeout=self.limits.health_timeout_s),
                                            self.model_status(), return_exceptions=True)
        status = None if isinstance(status, BaseException) else status
        if isinstance(info, BaseException):
            reason = "model deployment did not answer in time (loading or overloaded)" if isinstance(
                info, TimeoutError) else f"model deployment error ({type(info).__name__}): {to_api_error(info).message}"
            if status is not None and status["status"] != "HEALTHY":
                reason += f"; deployment {status['status']}: {status['message'] or status['replicas']}"
            raise ApiError(503, reason, code="unhealthy", type_="service_unavailable_error",
                           headers={"Retry-After": RETRY_AFTER_S})
        degraded = status is not None and (status["status"] != "HEALTHY" or set(status["replicas"]) != {"RUNNING"})
        return {"status": "degraded" if degraded else "ok", "model": status}

    async def model_status(self) -> dict | None:
        """The model deployment as the Serve controller sees it: status, replicas per state, message;
        None when the controller does not answer."""
        loop = asyncio.get_running_loop()
        try:
            overview = await asyncio.wait_for(loop.run_in_executor(None, serve.status), self.limits.health_timeout_s)
            deployment = overview.applications[self._model.app_name].deployments[self._model.deployment_name]
        except Exception:  # the controller is busy or restarting: health falls back to the model's answer
            return None
        return {"status": str(getattr(deployment.status, "value", deployment.status)),
                "message": _last_error_line(deployment.message),
                "replicas": {str(getattr(state, "value", state)): n for state, n in deployment.replica_states.items()
                             if n}}

    async def _call_model(self, method: str, *args: Any, timeout: float) -> Any:
        """`model.<method>.remote(*args)` within `timeout` (then cancelled: `TimeoutError`); its own
        exception otherwise."""
        response = getattr(self._model, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise TimeoutError from None


def _last_error_line(message: str) -> str:
    """Serve's failure messages end with the replica's traceback; its last line names the error."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
        return f"{lines[0]} {lines[-1]}"
    return " ".join(lines)


async def _await(response: Any) -> Any:
    # `wait_for` needs a coroutine; a handle's response is only awaitable.
    return await response
