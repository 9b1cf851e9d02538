"""What an encoder's vectors depend on, as one value: the model identity.

The weights (`revision`: the hub snapshot, or a hash of a local checkpoint's files), the `dtype` they run in
(resolved: never `auto`), `max_length` (where texts are cut), dense normalization and the instructions put
before queries and passages. Not the device, threads or batching: those change speed, not vectors. The
embedding cache keys its entries by it, the offline job refuses to resume an output made with another one,
and the model replicas report it (`/info`).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict

from .config import EncoderConfig, Instructions


class ModelIdentity(BaseModel):
    """What makes two encoders give the same vectors for the same input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    revision: str
    dtype: str
    max_length: int
    normalize_dense: bool
    instructions: Instructions = Instructions()

    @classmethod
    def of(cls, config: EncoderConfig, revision: str, dtype: str) -> ModelIdentity:
        """The identity of an encoder of `config` that loaded checkpoint `revision` and runs in `dtype` (resolved)."""
        return cls(revision=revision, dtype=dtype, max_length=config.max_length,
                   normalize_dense=config.normalize_dense, instructions=config.instructions)

    def cache_namespace(self) -> str:
        """The part of a cache key this identity owns: every field but the instructions, since the cache keys
        the text as encoded (instruction included), which two instruction settings may share correctly."""
        return f"{self.revision}|{self.dtype}|{self.max_length}|{self.normalize_dense}"

    def fingerprint(self) -> str:
        """A short digest of every field: equal for two identities exactly when they are equal."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
