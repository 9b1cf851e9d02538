"""One request's inputs, tokenized, on their way to the device: what the coalescer queues and the runner
computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from time import perf_counter

from ..core.inputs import EncodeOptions, TokenizedText
from .schemas import Priority


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
    priority: Priority = "interactive"  # the lane it waits in (`lanes`)
    whole: Job | None = None  # the job this one is a part of (`parts`): cancelled with it

    @cached_property
    def n_tokens(self) -> int:
        """Real tokens this job adds to a batch (cached: Serve's batcher sums a forming batch on each arrival)."""
        return sum(t.n_tokens for t in self.tokens)

    def dropped(self, now: float) -> bool:
        """Whether this job must not be computed at wall-clock time `now`: cancelled, or past its deadline."""
        return (self.cancelled or (self.whole is not None and self.whole.cancelled)
                or (self.deadline is not None and now >= self.deadline))

    def parts(self, max_tokens: int) -> list[Job]:
        """This job cut, between inputs, into jobs of at most `max_tokens` real tokens each (an input longer
        than that is a part of its own): how a bulk request fits the bulk lane's batches. Itself when it fits."""
        if self.n_tokens <= max_tokens:
            return [self]
        sizes = self.windows or [1] * len(self.tokens)  # items of `tokens` per input
        parts: list[Job] = []
        tokens: list[TokenizedText] = []
        windows: list[int] = []
        start = count = 0
        for size in sizes:
            item = self.tokens[start: start + size]
            start += size
            n = sum(t.n_tokens for t in item)
            if tokens and count + n > max_tokens:
                parts.append(self._part(tokens, windows))
                tokens, windows, count = [], [], 0
            tokens += item
            windows.append(size)
            count += n
        parts.append(self._part(tokens, windows))
        return parts

    def _part(self, tokens: list[TokenizedText], windows: list[int]) -> Job:
        return Job(self.options, tokens, windows if self.windows is not None else None, self.tokenization_ms,
                   self.deadline, self.enqueued_at, priority=self.priority, whole=self)


def lane_of(jobs: list[Job]) -> Priority:
    """The lane a batch of `jobs` runs in: bulk only when every job is bulk (with `scheduling: fifo` a batch
    may mix them, and then it is a query's batch)."""
    return "bulk" if all(job.priority == "bulk" for job in jobs) else "interactive"
