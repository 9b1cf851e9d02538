"""What an encode call gives back: one text's embeddings (what it takes is in `inputs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .inputs import EncodeOptions


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
