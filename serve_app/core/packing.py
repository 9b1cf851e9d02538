"""Token-budget batching: sort by length, pack batches up to a padded-token budget (as TEI's queue)."""

from __future__ import annotations

from collections.abc import Sequence


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
