"""The deployments' default options, in one place, and the builder of the model deployment.

Every default a deployment gets (resources, queue bounds, back-pressure, health checks, `user_config`) is
written here once; serve_config.yaml's `deployments:` section overrides any of them by name.

How many replicas is not set here: an option set in code cannot be removed by a Serve config, and Serve
lets an `autoscaling_config` set in code win over a config's `num_replicas` (a fixed count would be
silently ignored). So a deployment built here has Serve's default, one replica; a config fixes a count
with `num_replicas` or autoscales with an `autoscaling_config` (setting both is refused by Serve). The
blocks that scale on this service's signals are `model_autoscaling` and `ingress_autoscaling`: the shipped
configs write them out (tests/test_serve_config.py checks they equal these), Python callers pass them.

Autoscaling signals (docs/serving.md, "Autoscaling"): the model scales on real tokens in its replicas' batch
queues (`autoscaling.QueuedTokensPolicy`), since the ingress coalesces HTTP requests and a model replica
sees only a few ongoing calls; the ingress scales on Serve's own signal, ongoing HTTP requests per
replica (nothing coalesces them before it), with a target below `limits.max_pending_requests` so a
replica is added before one sheds load with 429.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ..core.errors import RETRY_AFTER_S
from .autoscaling import POLICY_PATH
from .config import AppArgs, BatchingConfig, ModelAutoscaling, RequestLimits
from .model import EmbeddingModel
from .names import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT
from .routing import ROUTER_PATH

__all__ = ["INGRESS_DEPLOYMENT", "MODEL_DEPLOYMENT", "build_model_deployment", "ingress_autoscaling",
           "ingress_deployment_options", "model_autoscaling", "model_deployment_options"]


def model_deployment_options() -> dict[str, Any]:
    """Defaults for the model deployment; serve_config.yaml may override any of them."""
    return {
        "name": MODEL_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
        # Requests waiting in the batch queue count as ongoing: a small cap would starve batches.
        "max_ongoing_requests": 256,
        "max_queued_requests": 1024,
        "backpressure_config": {"status_code": 429, "retry_after_s": RETRY_AFTER_S},
        "user_config": BatchingConfig().model_dump(),  # live knobs: override under deployments:
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        # A client's cancel must reach the replica holding its request (`routing`).
        "request_router_config": {"request_router_class": ROUTER_PATH},
    }


def ingress_deployment_options() -> dict[str, Any]:
    """Defaults for the ingress deployment."""
    # The ingress answers 429 itself past `limits.max_pending_requests` (JSON, per replica); the proxy's
    # own queue below is the backstop, also 429.
    return {"name": INGRESS_DEPLOYMENT, "ray_actor_options": {"num_cpus": 0.5},
            "max_ongoing_requests": 512, "max_queued_requests": 2048,
            "backpressure_config": {"status_code": 429, "retry_after_s": RETRY_AFTER_S}}


def model_autoscaling(min_replicas: int = 1, max_replicas: int = 1,
                      policy_kwargs: ModelAutoscaling | None = None) -> dict[str, Any]:
    """The model deployment's `autoscaling_config`: real tokens queued per replica (`autoscaling`), since the
    replicas see the ingress's coalesced calls, not HTTP requests. Serve replaces this block whole, so a
    config that edits it must keep the `policy`."""
    return {"min_replicas": min_replicas, "max_replicas": max_replicas, "policy": {
        "policy_function": POLICY_PATH, "policy_kwargs": (policy_kwargs or ModelAutoscaling()).model_dump()}}


def ingress_autoscaling(min_replicas: int = 1, max_replicas: int = 1,
                        limits: RequestLimits | None = None) -> dict[str, Any]:
    """The ingress deployment's `autoscaling_config`: Serve's own signal, HTTP requests held per replica, aimed
    at half of what a replica admits (`limits.max_pending_requests`; 429 past it), so a replica is added
    before any request is shed."""
    target = (limits or RequestLimits()).max_pending_requests // 2
    return {"min_replicas": min_replicas, "max_replicas": max_replicas, "target_ongoing_requests": target}


def build_model_deployment(args: AppArgs, options: dict[str, Any] | None = None) -> Application:
    """The model deployment alone (for Python-handle users and other apps); `options` override defaults.

    The `user_config` known here (the defaults, or one in `options`) is checked now: its queue budget
    must hold one `max_length` text. One set under `deployments:` in serve_config.yaml reaches only the
    replicas (Serve applies it after this builder ran), so `EmbeddingModel.reconfigure` checks it there.
    """
    options = {**model_deployment_options(), **(options or {})}
    BatchingConfig.model_validate(options.get("user_config") or {}).check_holds(args.encoder.max_length)
    # The decorator form, `serve.deployment(**options)(cls)`: the same call as `serve.deployment(cls, **options)`,
    # and the one Ray's annotation (a decorator returning a Deployment) describes.
    return serve.deployment(**options)(EmbeddingModel).bind(args.encoder, args.cache)
