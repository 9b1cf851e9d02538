"""The model deployment's autoscaling policy: replicas for the real tokens queued for the model
replicas' devices.

Why not Serve's built-in signal (ongoing requests per replica): the ingress coalesces up to
`limits.max_requests_per_model_call` HTTP requests into one `encode_stream` call, so a model replica
counts groups of requests, not requests or their tokens; a target in requests is either never reached
or reached at once. What a model replica has yet to do is counted in its batch queue, in real tokens:
`admission.DeviceLoad.queued_tokens`, submitted and not yet on the device (cache hits never enter it). Tokens on
the device are left out on purpose: a single caller with long texts keeps a replica computing but
queues nothing, and a second replica would not answer it sooner. Each replica reports the count through
Serve's `record_autoscaling_stats` hook (`EmbeddingModel`); the controller averages it over
`look_back_period_s`, and this policy asks for total tokens / `target_queued_tokens` replicas (queued bulk
tokens, a backfill's, count `bulk_weight` each: 0 keeps a backfill on the replicas there are). Serve
then applies `upscale_delay_s`, `downscale_delay_s`, the scaling factors and min/max_replicas as it does
for its own policy.

Serve pickles this module by value into the controller; `ModelAutoscaling` (in `config`) travels by
reference, so the controller needs `serve_app` importable, as the replicas do.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .config import ModelAutoscaling

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

logger = logging.getLogger("ray.serve")  # Serve's logger: in the controller's log, where this runs

QUEUED_TOKENS_METRIC = "queued_tokens"  # interactive
QUEUED_BULK_TOKENS_METRIC = "queued_bulk_tokens"
POLICY_PATH = "serve_app.serving.autoscaling:QueuedTokensPolicy"


class QueuedTokensPolicy:
    """Serve's controller instantiates this once per deployment with `policy_kwargs` (`ModelAutoscaling`)."""

    def __init__(self, **policy_kwargs: Any):
        self.settings: ModelAutoscaling | None
        try:
            self.settings = ModelAutoscaling.model_validate(policy_kwargs)
        except ValidationError as exc:
            # Raising here does not fail the deployment: it breaks the controller's loop for every
            # application. So the replica count stays where it is, and the controller's log says why.
            logger.error("autoscaling of this deployment is off: invalid policy_kwargs %s: %s", policy_kwargs, exc)
            self.settings = None

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        """Desired replicas: the tokens queued on all running replicas (each averaged over the look-back
        window; bulk tokens times `bulk_weight`) over the target per replica. No report yet (replicas just
        started): keep the target."""
        metrics = ctx.aggregated_metrics or {}
        interactive, bulk = metrics.get(QUEUED_TOKENS_METRIC), metrics.get(QUEUED_BULK_TOKENS_METRIC)
        if not interactive or self.settings is None:
            return ctx.target_num_replicas, {}
        queued = sum(interactive.values()) + self.settings.bulk_weight * sum((bulk or {}).values())
        return queued / self.settings.target_queued_tokens, {}
