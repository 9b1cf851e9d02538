"""Request bodies of the HTTP API (validated by FastAPI; they also make its OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OpenAIEmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`, as OpenAI's API (`user` accepted and ignored)."""

    model_config = ConfigDict(strict=True)

    input: str | list[str] = Field(description="one text or a list of texts")
    model: str | None = Field(None, description="accepted and echoed as the served model name")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must equal the model's width (1024 for BGE-M3)")
    user: str | None = None


class EncodeBody(BaseModel):
    """`POST /encode`: any mix of BGE-M3's three outputs for a list of texts."""

    model_config = ConfigDict(strict=True, extra="forbid")

    texts: list[str] = Field(min_length=1)
    dense: bool = True
    sparse: bool = True
    colbert: bool = False
    sparse_tokens: bool = Field(False, description="token strings instead of token ids in `sparse`")
    truncate: bool = Field(True, description="false: a text over max_length is a 413, not cut")

    @model_validator(mode="after")
    def _some_output(self) -> EncodeBody:
        if not (self.dense or self.sparse or self.colbert):
            raise ValueError("ask for at least one of dense, sparse, colbert")
        return self


class ScoreWeightsBody(BaseModel):
    """Weights of the hybrid scores."""

    model_config = ConfigDict(strict=True, extra="forbid")

    dense: float = Field(1.0, ge=0)
    sparse: float = Field(1.0, ge=0)
    colbert: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _positive_sum(self) -> ScoreWeightsBody:
        if self.dense + self.sparse + self.colbert <= 0:
            raise ValueError("at least one weight must be positive")
        return self


class ScoreBody(BaseModel):
    """`POST /score`: one query against passages, BGE-M3's `compute_score`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str
    passages: list[str] = Field(min_length=1)
    weights: ScoreWeightsBody = ScoreWeightsBody()
    truncate: bool = True
