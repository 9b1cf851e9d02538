"""One request's inputs, tokenized, on their way to the device: what the coalescer queues and the runner
computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from time import perf_counter

from ..core.inputs import EncodeOptions, TokenizedText


@dataclass(eq=False)  # compared by identity: two callers may send equal jobs
class Job:
    """One caller's inputs, tokenized, waiting for the device."""

    options: EncodeOptions
    tokens: list[TokenizedText]  # one per input, or several per input (windows) with `windows`
    windows: list[int] | None  # windows per input when overflow="chunk"
    tokenization_ms: float
    deadline: float | None = None  # wall clock (`time.time()`); past it the job is dropped, never computed
    enqueued_at: float = field(default_factory=perf_counter)
    cancelled: bool = False  # its caller went away: dropped like an expired job

    @cached_property
    def n_tokens(self) -> int:
        """Real tokens this job adds to a batch (cached: Serve's batcher sums a forming batch on each arrival)."""
        return sum(t.n_tokens for t in self.tokens)

    def dropped(self, now: float) -> bool:
        """Whether this job must not be computed at wall-clock time `now`: cancelled, or past its deadline."""
        return self.cancelled or (self.deadline is not None and now >= self.deadline)
