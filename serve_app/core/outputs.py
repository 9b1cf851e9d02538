"""Value types that cross module boundaries: what to compute, a tokenized text, one text's embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

OUTPUT_NAMES = ("dense", "sparse", "colbert")


@dataclass(frozen=True)
class EncodeOptions:
    """Which outputs to compute for a call, and what happens to a text over `max_length`.

    `truncate=False` refuses such a text (`InputTooLongError`); `overflow="chunk"` encodes it as windows
    and merges them instead (see `chunking`), and then `truncate` does not apply.
    """

    dense: bool = True
    sparse: bool = True
    colbert: bool = False
    sparse_tokens: bool = False
    truncate: bool = True
    overflow: Literal["truncate", "chunk"] = "truncate"

    def __post_init__(self) -> None:
        if not (self.dense or self.sparse or self.colbert):
            raise ValueError("ask for at least one of dense, sparse, colbert")
        if self.overflow not in ("truncate", "chunk"):
            raise ValueError(f"overflow must be 'truncate' or 'chunk', not {self.overflow!r}")

    @property
    def outputs_tag(self) -> str:
        """The requested outputs as one string, e.g. "dense+sparse" (metrics tags)."""
        return "+".join(name for name in OUTPUT_NAMES if getattr(self, name))

    @property
    def cache_tag(self) -> str:
        """What a cached entry made with these options holds: the outputs, token strings, and how long texts
        were treated (a truncated entry must never answer a call that refuses truncation)."""
        extra = [name for name, on in (("tokens", self.sparse and self.sparse_tokens),
                                       ("chunk", self.overflow == "chunk"),
                                       ("strict", self.overflow != "chunk" and not self.truncate)) if on]
        return "+".join([self.outputs_tag, *extra])


@dataclass(frozen=True)
class TokenizedText:
    """Token ids of one text after truncation (special tokens included) and its untruncated length."""

    ids: list[int]
    n_tokens_full: int

    @property
    def n_tokens(self) -> int:
        """Tokens the model sees."""
        return len(self.ids)

    @property
    def truncated(self) -> bool:
        """Whether tokens were cut to fit `max_length`."""
        return self.n_tokens_full > len(self.ids)


@dataclass
class Embedding:
    """The outputs of one text; a field is None when it was not asked for.

    dense: float32[dim]; sparse: parallel ascending token ids (int32) and weights (float32), with
    token strings on request; colbert: float32[n_tokens - 1, dim] (CLS excluded, as upstream).
    """

    n_tokens: int
    truncated: bool
    dense: np.ndarray | None = None
    sparse_indices: np.ndarray | None = None
    sparse_values: np.ndarray | None = None
    sparse_tokens: list[str] | None = field(default=None)
    colbert: np.ndarray | None = None

    def lexical_weights(self) -> dict[int, float]:
        """Sparse output as `{token_id: weight}`, the shape of FlagEmbedding's `lexical_weights`."""
        if self.sparse_indices is None or self.sparse_values is None:
            return {}
        return dict(zip(self.sparse_indices.tolist(), self.sparse_values.tolist()))

    def keep_only(self, options: EncodeOptions) -> None:
        """Drop, in place, the fields `options` did not ask for (a shared batch computes their union)."""
        if not options.dense:
            self.dense = None
        if not options.sparse:
            self.sparse_indices = self.sparse_values = self.sparse_tokens = None
        elif not options.sparse_tokens:
            self.sparse_tokens = None
        if not options.colbert:
            self.colbert = None
