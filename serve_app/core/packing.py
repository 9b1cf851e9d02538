"""The pack stage: group texts into batches by a padded-token budget (as TEI's queue), then pad each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .inputs import TokenizedText


def pack_by_token_budget(lengths: Sequence[int], max_forward_tokens: int, max_batch_size: int,
                         min_length_ratio: float) -> list[list[int]]:
    """Split indices into batches, longest first, so each batch's padded size fits the budget.

    A batch's cost is `len(batch) * longest_in_batch` (what the forward pass really computes). A text
    longer than the budget alone still gets a batch of its own. A batch also ends before a text shorter
    than `min_length_ratio` x its longest text, which bounds padding waste when queries and passages
    share a batch (0 turns that off). No defaults here: they are `EncoderConfig`'s.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * longest > max_forward_tokens or len(current) >= max_batch_size
                        or lengths[index] < min_length_ratio * longest):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass
class PaddedBatch:
    """One forward pass's input: ids padded to the longest text, and the mask of real tokens."""

    items: list[TokenizedText]
    input_ids: torch.Tensor  # [batch, longest] int64
    mask: torch.Tensor  # [batch, longest] bool


def pad_batch(items: list[TokenizedText], pad_id: int, device: torch.device) -> PaddedBatch:
    """Pad `items` into tensors on `device` (one host-to-device copy for the ids)."""
    longest = max(t.n_tokens for t in items)
    ids = np.full((len(items), longest), pad_id, dtype=np.int64)
    for row, item in enumerate(items):
        ids[row, : item.n_tokens] = item.ids
    input_ids = torch.from_numpy(ids).to(device, non_blocking=True)
    # From lengths, not `ids != pad`: a text may contain a literal "<pad>", which upstream attends to.
    lengths = torch.tensor([t.n_tokens for t in items], device=device)
    mask = torch.arange(longest, device=device) < lengths[:, None]
    return PaddedBatch(items, input_ids, mask)
