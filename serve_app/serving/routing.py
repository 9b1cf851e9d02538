"""The model deployment's request router: every call is routed as Serve's default router routes it, except
a `cancel`, which goes to the replica that holds the requests it names.

A coalesced call (`EmbeddingModel.encode_stream`) reports the replica answering it; when one of its HTTP
requests is abandoned (the client disconnected), the ingress calls `cancel(request_ids, replica=...)`,
and this router sends that call to that replica: a random replica would not hold the job. It runs in the
caller's process (each deployment handle routes its own calls).

Serve's default router hands a replica it picked to the oldest request waiting to be routed (FIFO),
which could give the replica chosen for a cancel to another call and the cancel another replica; this
router keeps Serve's base matching (each replica to the request it was chosen for) and otherwise picks as
Serve's does: two random replicas, nearest first, the one with the shorter queue.
"""

from __future__ import annotations

import random

from ray.serve.request_router import LocalityMixin, PendingRequest, RequestRouter, RunningReplica

ROUTER_PATH = f"{__name__}:CancelToOwnerRouter"
PIN_KWARG = "replica"  # the keyword argument of `EmbeddingModel.cancel` naming the replica


class CancelToOwnerRouter(LocalityMixin, RequestRouter):
    """Power of two choices, with a call that names a replica (`PIN_KWARG`) sent to that replica."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """The named replica when the request names one still running; otherwise two random candidates
        (nearest first), of which Serve takes the one with the shorter queue."""
        pinned = pending_request.kwargs.get(PIN_KWARG) if pending_request is not None else None
        if pinned is not None:
            owner = [r for r in candidate_replicas if r.replica_id.unique_id == pinned]
            if owner:
                return [owner]
            # That replica is gone, and its requests with it: any replica answers "nothing to drop".
        nearest = self.apply_locality_routing(pending_request)
        chosen = random.sample(list(nearest), k=min(2, len(nearest)))
        return [[self._replicas[replica_id] for replica_id in chosen]] if chosen else []
