"""Request bodies of the HTTP API and the error body of its answers (pydantic models: FastAPI validates
requests with them, and they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from ..core.config import InputType  # which side of retrieval a text is on (its configured instruction)
from ..core.inputs import EncodeOptions, Overflow, input_shape, require_an_output
from ..serving.schemas import Priority

EncodingFormat = Literal["float", "base64"]
DenseDtype = Literal["float32", "int8", "uint8", "binary", "ubinary"]
TokenId = Annotated[int, Field(ge=0)]  # the upper bound, the vocabulary size, is the model replica's to check
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
PRIORITY_HEADER = "X-Priority"  # the same choice as the body's `priority`, for clients that cannot add a field
PRIORITY_HELP = ("interactive (queries: first on the device) or bulk (backfills: the device's spare time, a longer "
                 f"timeout, refused first under load); absent: the {PRIORITY_HEADER} header's, else interactive")


# OpenAI's `input` (and TEI's `inputs`): one text, texts, one tokenized input or several. Tokenized inputs
# are ids as `/tokenize` returns them, special tokens included. The shape is chosen from the value first,
# so an error names the item at fault in that shape (not the first of four failed guesses).
Inputs = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[str], Tag("list[str]")] | Annotated[TokenIds, Tag("list[int]")]
    | Annotated[list[TokenIds], Tag("list[list[int]]")],
    Discriminator(input_shape, custom_error_type="invalid_input_shape",
                  custom_error_message="must be a text, a list of texts, a list of token ids or a list of such "
                                       "lists (texts and token ids are not mixed in one request)")]


class OpenAIEmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`, as OpenAI's API (`user` accepted and ignored); `dtype` and `overflow` are
    this server's extensions."""

    model_config = ConfigDict(strict=True)

    input: Inputs = Field(description="one text, a list of texts, one list of token ids or a list of them "
                          "(ids as `/tokenize` returns them: special tokens included)")
    model: str | None = Field(None, description="accepted and echoed as the served model name")
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = Field(None, description="must equal the model's width (1024 for BGE-M3)")
    user: str | None = None
    dtype: DenseDtype = Field("float32", description="quantized output: int8, uint8, binary, ubinary")
    overflow: Overflow = Field(EncodeOptions.overflow, description="chunk: encode a text over max_length as merged "
                               "windows")
    input_type: InputType | None = Field(None, description="query or passage: the server's instruction for that "
                                         "side goes before each text (none configured, or token ids: no change)")
    # None, not "interactive": a body that does not say must not conflict with the header.
    priority: Priority | None = Field(None, description=PRIORITY_HELP)


class EncodeBody(BaseModel):
    """`POST /encode`: any mix of BGE-M3's three outputs for a list of texts, or of tokenized inputs."""

    model_config = ConfigDict(strict=True, extra="forbid")

    # token_ids first: `texts` is validated after it, and names the field when neither (or both) is given.
    token_ids: list[TokenIds] | None = Field(None, min_length=1, description="instead of `texts`: each input as "
                                             "token ids, as `/tokenize` returns them (special tokens included)")
    texts: list[str] | None = Field(None, min_length=1, validate_default=True, description="the texts (or "
                                    "`token_ids`)")
    # The defaults are `EncodeOptions`' (as on the handle and in the client): the same call gives the same outputs.
    dense: bool = Field(EncodeOptions.dense, description="the dense vector (CLS, normalized)")
    sparse: bool = Field(EncodeOptions.sparse, description="the sparse lexical weights, by token id")
    colbert: bool = Field(EncodeOptions.colbert, description="the ColBERT multi-vector, one row per token after <s>")
    sparse_tokens: bool = Field(EncodeOptions.sparse_tokens, description="the sparse weights' token strings, sent "
                                "in place of their ids in `sparse`")
    truncate: bool = Field(EncodeOptions.truncate, description="false: a text over max_length is a 413, not cut")
    overflow: Overflow = Field(EncodeOptions.overflow, description="chunk: encode a text over max_length as windows, "
                               "merged (dense mean, sparse max, ColBERT concatenated)")
    input_type: InputType | None = Field(None, description="query or passage: the server's instruction for that "
                                         "side goes before each text (none configured, or token ids: no change)")
    # None, not "interactive": a body that does not say must not conflict with the header.
    priority: Priority | None = Field(None, description=PRIORITY_HELP)
    encoding_format: EncodingFormat = Field("float", description="base64: dense and ColBERT as base64 bytes")
    dense_dtype: DenseDtype = "float32"
    colbert_dtype: Literal["float32", "float16"] = "float32"

    @model_validator(mode="after")
    def _some_output(self) -> EncodeBody:
        require_an_output(self.dense, self.sparse, self.colbert)
        return self

    @field_validator("texts")
    @classmethod
    def _texts_or_ids(cls, texts: list[str] | None, info: ValidationInfo) -> list[str] | None:
        given_ids = info.data.get("token_ids") is not None
        if texts is None and not given_ids and "token_ids" in info.data:
            raise ValueError("field required (or token_ids)")
        if texts is not None and given_ids:
            raise ValueError("give either texts or token_ids, not both")
        return texts

    @property
    def inputs(self) -> tuple[list[str] | list[list[int]], str]:
        """What to encode, and the field it came in."""
        return (self.texts, "texts") if self.texts is not None else (self.token_ids or [], "token_ids")


class ScoreWeightsBody(BaseModel):
    """Weights of the hybrid scores."""

    model_config = ConfigDict(strict=True, extra="forbid")

    dense: float = Field(1.0, ge=0)
    sparse: float = Field(1.0, ge=0)
    colbert: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _positive_sum(self) -> ScoreWeightsBody:
        # Both hybrid scores are weighted means: sparse+dense divides by dense + sparse.
        if self.dense + self.sparse <= 0:
            raise ValueError("dense or sparse must be positive (the sparse+dense score is their weighted mean)")
        return self


class ScoreBody(BaseModel):
    """`POST /score`: one query against passages, BGE-M3's `compute_score`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str
    passages: list[str] = Field(min_length=1)
    weights: ScoreWeightsBody = ScoreWeightsBody()
    truncate: bool = True


class TeiEmbedRequest(BaseModel):
    """`POST /embed`, `/embed_sparse`, `/embed_all` and `POST /`: text-embeddings-inference's bodies."""

    model_config = ConfigDict(strict=True, extra="forbid")

    inputs: Inputs = Field(description="one text, a list of texts, one list of token ids or a list of them")
    truncate: bool | None = Field(None, description="TEI's default: an over-long input is an error")
    truncation_direction: Literal["right", "Right", "left", "Left"] | None = None
    normalize: bool | None = Field(None, description="only true (the default) is supported")
    prompt_name: InputType | None = Field(None, description="query or passage: the server's instruction for that "
                                          "side goes before each text (not token ids)")
    dimensions: int | None = None
    raw_scores: bool | None = Field(None, description="/embed_sparse: accepted; weights are BGE-M3's")


class TeiTokenizeRequest(BaseModel):
    """`POST /tokenize`, as TEI."""

    model_config = ConfigDict(strict=True, extra="forbid")

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: InputType | None = Field(None, description="tokenize each input after this side's instruction")


class TeiDecodeRequest(BaseModel):
    """`POST /decode`, as TEI: one list of ids or a list of them."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True


class ErrorDetail(BaseModel):
    """What went wrong: a message naming the field and the limit, never the user's text."""

    model_config = ConfigDict(extra="forbid")

    message: str
    type: str = Field(description="invalid_request_error, authentication_error, overloaded_error, "
                      "service_unavailable_error, timeout_error or server_error")
    param: str | None = Field(description="the offending field, e.g. `input[3]`, `body`, `authorization`")
    code: str | None = Field(description="machine-readable reason, e.g. `too_many_texts`, `overloaded`")


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer, as OpenAI's API (written by `errors.error_response`)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail
