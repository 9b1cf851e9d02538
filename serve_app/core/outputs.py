"""Value types that cross module boundaries: a tokenized text and one text's embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
