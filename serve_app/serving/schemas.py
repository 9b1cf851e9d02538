"""Typed request and result of the model deployment's Python handle API.

Other deployments and Python code call `handle.encode.remote(EncodeRequest(...))` and get an
`EncodeResult` back: the same data the HTTP routes serialize, without HTTP in between.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.config import InputType
from ..core.inputs import EncodeOptions, Overflow, require_an_output
from ..core.outputs import Embedding

# Which lane of the model replica a request takes (`serving.lanes`): `interactive` (queries: first on the device)
# or `bulk` (backfills: the device's spare time, a minimum share of it, refused first under load).
Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[str, ...] = get_args(Priority)


class EncodeRequest(BaseModel):
    """Texts (or lists of token ids) to encode and which of BGE-M3's outputs to return."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    texts: list[str] | None = Field(None, min_length=1, description="the texts; or `token_ids`")
    token_ids: list[list[int]] | None = Field(
        None, min_length=1, description="inputs already tokenized, each as `/tokenize` returns it (special tokens "
        "included), used as sent: no instruction is added; ids outside the vocabulary are an error")
    # The defaults are `EncodeOptions`' (as over HTTP and in the client): the same call gives the same outputs.
    dense: bool = EncodeOptions.dense
    sparse: bool = EncodeOptions.sparse
    colbert: bool = EncodeOptions.colbert
    sparse_tokens: bool = Field(EncodeOptions.sparse_tokens, description="the sparse weights' token strings, "
                                "beside their ids (`Embedding.sparse_tokens`)")
    truncate: bool = Field(EncodeOptions.truncate, description="false: a text over max_length is an error, not cut")
    overflow: Overflow = Field(EncodeOptions.overflow, description="chunk: a text over max_length is encoded as "
                               "windows and merged instead of cut")
    deadline: float | None = Field(None, gt=0, description="give up (RequestTimeoutError) at this wall-clock "
                                   "time, in `time.time()` seconds (the caller's clock: replicas may run on "
                                   "other nodes); texts not computed by then never are")
    timeout_s: float | None = Field(None, gt=0, description="give up this long after the model replica received "
                                    "the request (as `deadline`); with both, the earlier applies")
    input_type: InputType | None = Field(None, description="query or passage: the configured instruction for "
                                         "that side goes before each text (`EncoderConfig.instructions`)")
    request_id: str | None = Field(None, max_length=64, description="the caller's name for this request, for "
                                   "`EmbeddingModel.cancel` (the ingress sets one per HTTP request)")
    priority: Priority = Field("interactive", description="interactive (queries) goes to the device before every "
                               "waiting bulk batch; bulk (backfills) gets the device's spare time and a minimum "
                               "share of it, and is refused first under load")

    @model_validator(mode="after")
    def _some_output(self) -> EncodeRequest:
        require_an_output(self.dense, self.sparse, self.colbert)
        if (self.texts is None) == (self.token_ids is None):
            raise ValueError("give either texts or token_ids")
        return self

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The texts or the lists of token ids, as sent."""
        return self.token_ids if self.token_ids is not None else cast("list[str]", self.texts)

    def deadline_at(self, received: float) -> float | None:
        """The wall-clock time this request expires, for one received at `received` (`time.time()`)."""
        ends = [t for t in (self.deadline, None if self.timeout_s is None else received + self.timeout_s)
                if t is not None]
        return min(ends) if ends else None

    def options(self) -> EncodeOptions:
        """What the encoder is asked for."""
        return EncodeOptions(dense=self.dense, sparse=self.sparse, colbert=self.colbert,
                             sparse_tokens=self.sparse_tokens, truncate=self.truncate, overflow=self.overflow)


class Timings(BaseModel):
    """Where a request's time went inside the model replica, in milliseconds (TEI's timing headers)."""

    tokenization_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0


class EncodeResult(BaseModel):
    """Per-text outputs in request order, token usage, and how the request was batched."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    embeddings: list[Embedding]
    prompt_tokens: int
    timings: Timings
    batch_requests: int = Field(description="requests that shared this request's model batch")
    batch_texts: int = Field(description="texts in that model batch")
    identity: str = Field("", description="the answering replica's `ModelIdentity.fingerprint()`: a caller that "
                          "must not mix vectors (the offline job) checks every answer against it")

