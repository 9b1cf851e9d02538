"""`overflow: "chunk"`: a text longer than `max_length` becomes several windows, encoded and merged.

Windows do not overlap; each is `<s> ... </s>` around at most `max_length - 2` content tokens, so a
text that fits is exactly one window, identical to plain tokenization. Merged outputs:
dense = mean of the window vectors, re-normalized; sparse = max weight per token over the windows
(BGE-M3's own rule within a text); ColBERT = the windows' rows concatenated in order.
"""

from __future__ import annotations

from itertools import accumulate
from typing import TypeVar

import numpy as np

from .inputs import TokenizedText
from .outputs import Embedding

_T = TypeVar("_T")


def split_windows(ids: list[int], max_length: int) -> list[TokenizedText]:
    """`ids` (special tokens included, first and last) as windows of at most `max_length` tokens."""
    if len(ids) <= max_length:
        return [TokenizedText(ids, len(ids))]
    first, content, last = ids[0], ids[1:-1], ids[-1]
    step = max_length - 2
    return [TokenizedText([first, *content[i: i + step], last], len(content[i: i + step]) + 2)
            for i in range(0, len(content), step)]


def merge_groups(flat: list[Embedding], windows: list[int], normalize: bool = True) -> list[Embedding]:
    """Each text's embedding from the embeddings of its windows, which lie consecutively in `flat`
    (`windows[i]`: how many text i has)."""
    bounds = list(accumulate(windows, initial=0))
    return [merge_windows(flat[a:b], normalize) for a, b in zip(bounds[:-1], bounds[1:])]


def merge_windows(parts: list[Embedding], normalize: bool = True) -> Embedding:
    """One text's embedding from its windows' embeddings (see the module docstring)."""
    if len(parts) == 1:
        return parts[0]
    merged = Embedding(n_tokens=sum(p.n_tokens for p in parts), truncated=False)
    if parts[0].dense is not None:
        dense = np.asarray(np.mean(_every([p.dense for p in parts]), axis=0, dtype=np.float32))
        norm = float(np.linalg.norm(dense))
        merged.dense = dense / norm if normalize and norm > 0 else dense
    if parts[0].sparse_indices is not None:
        index_parts = _every([p.sparse_indices for p in parts])
        ids = np.concatenate(index_parts)
        weights = np.concatenate(_every([p.sparse_values for p in parts]))
        unique, inverse = np.unique(ids, return_inverse=True)
        best = np.zeros(len(unique), dtype=np.float32)
        np.maximum.at(best, inverse, weights)
        merged.sparse_indices, merged.sparse_values = unique.astype(np.int32), best
        if parts[0].sparse_tokens is not None:
            token_parts = _every([p.sparse_tokens for p in parts])
            strings = {int(i): s for idx, tokens in zip(index_parts, token_parts) for i, s in zip(idx, tokens)}
            merged.sparse_tokens = [strings[int(i)] for i in unique]
    if parts[0].colbert is not None:
        merged.colbert = np.concatenate(_every([p.colbert for p in parts]))
    return merged


def _every(outputs: list[_T | None]) -> list[_T]:
    """One output of every window of a text: all windows were encoded with the same outputs."""
    present = [o for o in outputs if o is not None]
    if len(present) != len(outputs):
        raise ValueError("the windows of one text were encoded with different outputs")
    return present
