"""Typed configuration of the encoder core, shared by the Serve replicas and the Ray Data actors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "BAAI/bge-m3"


def refuse_renamed(**hints: str) -> Any:
    """A model validator for a settings class: a setting's old name fails with a message naming the new one
    (instead of pydantic's bare "extra inputs are not permitted", which leaves the user guessing). `hints`:
    old name -> where it went. Assign it in the class body, e.g. `_renamed = refuse_renamed(old="...")`."""
    def check(cls, data):
        if isinstance(data, dict):
            for old, hint in hints.items():
                if old in data:
                    raise ValueError(f"{old} was renamed: {hint}")
        return data

    return model_validator(mode="before")(classmethod(check))  # type: ignore[arg-type]


InputType = Literal["query", "passage"]


class Instructions(BaseModel):
    """Text put before every query or passage before it is encoded (fine-tuned variants and domain setups
    use them; BGE-M3 itself needs none, so none by default). Token-id input gets none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str | None = Field(None, description="put before a text sent with input_type query")
    passage: str | None = Field(None, description="put before a text sent with input_type passage")

    def apply(self, texts: list[str], input_type: InputType | None) -> list[str]:
        """`texts` as they are encoded: each after the instruction of `input_type` (unchanged when that
        has none, or no type is given)."""
        instruction = getattr(self, input_type) if input_type is not None else None
        return [instruction + text for text in texts] if instruction else texts


class EncoderConfig(BaseModel):
    """What model to load and how to run it. One instance configures one `Encoder`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="hub id (e.g. BAAI/bge-m3) or a local checkpoint directory")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on GPU, bf16 on a CPU with AMX/avx512_bf16, fp32 otherwise"
    )
    max_length: int = Field(8192, le=8192, description="tokens per text, special tokens included (at least 3)")
    max_forward_tokens: int = Field(16384, ge=2, description="padded tokens per forward pass (texts x longest); "
                                    "see docs/serving.md, 'Two token budgets'")
    max_batch_size: int = Field(256, ge=1, description="texts per forward pass")
    min_length_ratio: float = Field(
        0.5, ge=0, le=1, description="a forward pass holds no text shorter than this x its longest (padding bound)")
    normalize_dense: bool = Field(True, description="L2-normalize the dense vector (as upstream; its dot product is "
                                  "then the cosine)")
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; Ray sets OMP_NUM_THREADS from num_cpus, so set it here"
    )
    instructions: Instructions = Field(Instructions(), description="text put before queries and passages "
                                       "(docs/serving.md, 'Queries and passages')")

    _renamed = refuse_renamed(max_batch_tokens=(
        "the encoder's padded-tokens-per-forward-pass budget is now encoder.max_forward_tokens (the model "
        "deployment's real-tokens-per-queue-batch budget is user_config.max_queue_tokens)"))

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @field_validator("max_length")
    @classmethod
    def _check_max_length(cls, value: int) -> int:
        if value < 3:  # else truncation keeps no text and overflow="chunk" has no window to step by
            raise ValueError(f"max_length must be at least 3 (got {value}): <s> and </s> take 2 tokens, "
                             "leaving no room for the text")
        return value
