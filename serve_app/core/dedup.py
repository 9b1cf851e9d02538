"""Identical token sequences in one call run once: a wrapper around the staged encode.

Repeated texts (in one request, or across requests coalesced into one batch) cost one row of the forward
pass; each copy gets its own `Embedding` object sharing the arrays, so a caller may drop fields of its
own without touching another's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .inputs import TokenizedText
from .outputs import Embedding


def run_distinct(run: Callable[[list[TokenizedText]], list[Embedding]],
                 items: list[TokenizedText]) -> list[Embedding]:
    """`run(items)`, with each distinct (ids, truncated) pair computed once."""
    first: dict[tuple, int] = {}
    slots = [first.setdefault((tuple(t.ids), t.truncated), len(first)) for t in items]
    if len(first) == len(items):
        return run(items)
    distinct: list[TokenizedText | None] = [None] * len(first)
    for item, slot in zip(items, slots):
        distinct[slot] = distinct[slot] or item
    unique = run(distinct)  # type: ignore[arg-type]  # every slot was filled above
    return [replace(unique[slot]) for slot in slots]
