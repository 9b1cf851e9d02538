"""The post-process stage: BGE-M3's three outputs from the transformer's last hidden state.

dense = the CLS vector (L2-normalized); sparse = ReLU(sparse_linear) weight, max per token id, reduced on
the device with one `scatter_reduce` over unique (text, id) keys (never a `[batch, vocab]` tensor);
ColBERT = normalized `colbert_linear` rows after CLS, padding dropped in one pass. One host transfer per
output per batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .inputs import EncodeOptions
from .outputs import Embedding
from .packing import PaddedBatch


class OutputHeads:
    """The sparse and ColBERT heads of a checkpoint, and the rules that turn hidden states into outputs."""

    def __init__(self, sparse_linear: torch.nn.Module, colbert_linear: torch.nn.Module, non_lexical_ids: list[int],
                 vocab_size: int, normalize_dense: bool, device: torch.device):
        self.sparse_linear, self.colbert_linear = sparse_linear, colbert_linear
        self._non_lexical = torch.tensor(non_lexical_ids, device=device)
        self._vocab_size = vocab_size
        self._normalize_dense = normalize_dense

    def __call__(self, hidden: torch.Tensor, batch: PaddedBatch, options: EncodeOptions) -> list[Embedding]:
        """One `Embedding` per text of `batch`, with the outputs `options` asks for (token strings excepted)."""
        results = [Embedding(n_tokens=t.n_tokens, truncated=t.truncated) for t in batch.items]
        if options.dense:
            for result, vec in zip(results, self._dense(hidden).cpu().numpy()):
                result.dense = vec
        if options.sparse:
            self._sparse(hidden, batch, results)
        if options.colbert:
            self._colbert(hidden, batch.mask, results)
        return results

    def _dense(self, hidden: torch.Tensor) -> torch.Tensor:
        vecs = hidden[:, 0].float()
        return F.normalize(vecs, dim=-1) if self._normalize_dense else vecs

    def _sparse(self, hidden: torch.Tensor, batch: PaddedBatch, results: list[Embedding]) -> None:
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float()
        input_ids = batch.input_ids
        keep = batch.mask & ~torch.isin(input_ids, self._non_lexical) & (weights > 0)
        rows, cols = keep.nonzero(as_tuple=True)
        keys = rows * self._vocab_size + input_ids[rows, cols]
        unique_keys, inverse = torch.unique(keys, return_inverse=True)  # sorted: rows stay contiguous
        values = torch.zeros(unique_keys.numel(), device=weights.device).scatter_reduce(
            0, inverse, weights[rows, cols], reduce="amax", include_self=False)
        counts = torch.bincount(unique_keys // self._vocab_size, minlength=len(results))
        token_ids = (unique_keys % self._vocab_size).to(torch.int32).cpu().numpy()
        values_np = values.cpu().numpy()
        bounds = np.cumsum(counts.cpu().numpy())[:-1]
        for result, idx, val in zip(results, np.split(token_ids, bounds), np.split(values_np, bounds)):
            result.sparse_indices, result.sparse_values = idx, val

    def _colbert(self, hidden: torch.Tensor, mask: torch.Tensor, results: list[Embedding]) -> None:
        # upstream keeps </s> and drops CLS
        token_mask = mask[:, 1:]
        vecs = F.normalize(self.colbert_linear(hidden[:, 1:]).float(), dim=-1)[token_mask]
        counts = token_mask.sum(dim=1).cpu().numpy()
        for result, rows in zip(results, np.split(vecs.cpu().numpy(), np.cumsum(counts)[:-1])):
            result.colbert = rows


def attach_token_strings(results: list[Embedding], strings: dict[int, str]) -> None:
    """Set each result's `sparse_tokens` from its sparse ids (`strings`: id -> text, for every id)."""
    for result in results:
        if result.sparse_indices is not None:
            result.sparse_tokens = [strings[int(i)] for i in result.sparse_indices]
