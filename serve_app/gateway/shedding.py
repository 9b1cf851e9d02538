"""Refusals decided in the ingress, before any model call, from what the model replicas said about their queues.

A model replica refuses a request whose deadline the work queued ahead of it would miss
(`WouldMissDeadlineError`, 429) and says how long that work takes to drain (`retry_after_s`); a bulk request
it refuses while its queue is longer than the bulk lane waits (`BulkBacklogError`), saying when it will not
be. Under a storm of retries (clients that resend at once after a 429) most requests are refused, and each
refusal that reaches a model replica costs it CPU its device needs: the call's texts unpickled, its event
loop, its host thread (measured: docs/reliability.md, "A retry storm"). So each ingress remembers, per
replica and lane, until when that replica's queue is known to be too long (`busy_until`), and refuses at
once a request whose deadline the queue of every replica it has lately heard from would miss, by the
replica's own rule and margin (`admission.DEADLINE_SHARE`). It never refuses what a replica might admit:
the queue only drains from what was known at the refusal, a replica it has not heard from keeps it
sending, and one request per `PROBE_INTERVAL_S` goes through anyway, so a queue that drained sooner
(cancels, expiries) is learnt again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import BulkBacklogError, WouldMissDeadlineError
from ..serving.admission import DEADLINE_SHARE

PROBE_INTERVAL_S = 0.25  # while refusing, one request this often still goes to the model replicas
SEEN_FOR_S = 5.0  # a replica not heard from for this long no longer counts (it may be gone)


@dataclass
class _Replica:
    seen_at: float
    busy_until: dict[str, float] = field(default_factory=lambda: {"interactive": 0.0, "bulk": 0.0})


class RefusalGate:
    """One ingress replica's memory of the model replicas' queues, and the refusals it allows."""

    def __init__(self) -> None:
        self._replicas: dict[str | None, _Replica] = {}
        self._probed_at = float("-inf")

    def heard(self, replica: str | None, answers: list, now: float) -> None:
        """A call's update from `replica` (its unique id; None outside Serve) at wall-clock `now`: the replica
        is alive, and each refusal among `answers` says how long its queue stays busy for that lane."""
        known = self._replicas.setdefault(replica, _Replica(now))
        known.seen_at = now
        for answer in answers:
            if isinstance(answer, BulkBacklogError):
                known.busy_until["bulk"] = now + (answer.retry_after_s or 0.0)
            elif isinstance(answer, WouldMissDeadlineError):  # the queue ahead of a query drains in retry_after_s
                known.busy_until["interactive"] = now + (answer.retry_after_s or 0.0)

    def refusal(self, priority: str, deadline: float | None, now: float) -> WouldMissDeadlineError | None:
        """The refusal of a request of `priority` due at `deadline` (wall clock) arriving at `now`, or None to
        send it: refused only when every replica heard from lately is busy past what its deadline allows."""
        if deadline is None:
            return None
        recent = [r for r in self._replicas.values() if now - r.seen_at <= SEEN_FOR_S]
        if not recent:
            return None
        wait_s = min(r.busy_until[priority] for r in recent) - now
        remaining_s = deadline - now
        busy = wait_s > 0 if priority == "bulk" else wait_s > DEADLINE_SHARE * remaining_s
        if not busy or now - self._probed_at >= PROBE_INTERVAL_S:
            if busy:
                self._probed_at = now
            return None
        if priority == "bulk":
            return BulkBacklogError(wait_s, 0.0, retry_after_s=max(1.0, wait_s))
        return WouldMissDeadlineError(wait_s, remaining_s, retry_after_s=max(1.0, wait_s))
