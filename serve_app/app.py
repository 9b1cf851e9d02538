"""Application builders: validate typed args, then apply `serve.deployment(**options)(cls).bind(...)`.

`serve run serve_config.yaml` calls `build_app(args)`; the YAML's `deployments:` section overrides the
default options (`serving/deployments.py`: resources, queues, user_config) by name and decides replicas
(`num_replicas` or `autoscaling_config`). With `ingress`, this is the top of the tree: it joins the
transports to the serving layer.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from .ingress import Ingress
from .serving.config import AppArgs
from .serving.deployments import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    build_model_deployment,
    ingress_deployment_options,
    model_deployment_options,
)

__all__ = ["INGRESS_DEPLOYMENT", "MODEL_DEPLOYMENT", "build_app", "build_model_deployment", "build_service",
           "ingress_deployment_options", "model_deployment_options"]


def build_service(args: dict | AppArgs | None = None, model_options: dict[str, Any] | None = None) -> Application:
    """The HTTP service, ingress + model deployment, for Python callers: `model_options` override the
    model deployment's options (e.g. `num_replicas`), as `deployments:` does in serve_config.yaml."""
    args = AppArgs.parse(args)
    ingress = serve.deployment(**ingress_deployment_options())(serve.ingress()(Ingress))
    return ingress.bind(build_model_deployment(args, model_options), args)


def build_app(args: dict | AppArgs | None = None) -> Application:
    """The builder `serve_config.yaml` points at (Serve requires exactly one parameter): `args` are `AppArgs`."""
    return build_service(args)
