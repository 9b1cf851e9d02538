"""deploy/kuberay/rayservice.yaml is a valid KubeRay RayService whose serveConfigV2 is serve_config.yaml
with only the documented differences, each consistent with the cluster the manifest describes.

No Kubernetes here: the checks are on the file. The KubeRay fields are those of KubeRay's v1 Go types
(ray-operator/apis/ray/v1: rayservice_types.go, raycluster_types.go); a misspelt field would be dropped
by the API server without a word, so every key used must be one of them.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path, PurePosixPath

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, build_app
from serve_app.serving.config import MODEL_ENV_VAR, AppArgs, BatchingConfig

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
APP = "applications.bge-m3"
MODEL, INGRESS = f"{APP}.deployments.{MODEL_DEPLOYMENT}", f"{APP}.deployments.{INGRESS_DEPLOYMENT}"
# The only settings where serveConfigV2 may differ from serve_config.yaml (the manifest's header says why);
# test_service_config_differs_only_where_documented checks what each value must agree with.
DOCUMENTED_DIFFERENCES = {
    "http_options.host",                              # 0.0.0.0: reached through the Kubernetes Service
    f"{APP}.args.encoder.model",                      # a path in the worker pods' model volume
    f"{MODEL}.ray_actor_options.num_gpus",            # one replica per GPU
    f"{MODEL}.autoscaling_config.min_replicas",       # >= 2: a node loss leaves a replica
    f"{MODEL}.autoscaling_config.max_replicas",       # what the GPU worker group can hold
    f"{MODEL}.autoscaling_config.policy.policy_kwargs.target_queued_tokens",  # a GPU's, as configs/multi-gpu.yaml
    f"{INGRESS}.autoscaling_config.min_replicas",     # >= 2: the ingress runs on the workers
    f"{INGRESS}.autoscaling_config.max_replicas",     # as the model's
}
# KubeRay v1 fields (a subset of each type: the ones a RayService like this one may use).
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
                   "excludeHeadPodFromServeSvc"}
RAYCLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "authOptions", "headGroupSpec",
                   "workerGroupSpecs", "gcsFaultToleranceOptions", "headServiceAnnotations", "suspend",
                   "managedBy", "upgradeStrategy"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
                "template", "scaleStrategy", "numOfHosts", "suspend"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def serve_config(manifest) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def _leaves(tree, prefix: str = "") -> dict:
    """Nested dicts flattened to dotted keys; a list of named items (applications, deployments) is keyed
    by name, so a difference says which one."""
    if isinstance(tree, list) and all(isinstance(item, dict) and "name" in item for item in tree):
        tree = {item["name"]: {k: v for k, v in item.items() if k != "name"} for item in tree}
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    out: dict = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def _containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_manifest_is_a_kuberay_v1_rayservice(manifest):
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    spec = manifest["spec"]
    assert set(spec) <= RAYSERVICE_SPEC and isinstance(spec["serveConfigV2"], str)  # a YAML string, not a map
    cluster = spec["rayClusterConfig"]
    assert set(cluster) <= RAYCLUSTER_SPEC and set(cluster["headGroupSpec"]) <= HEAD_GROUP
    assert cluster["authOptions"]["mode"] == "token"  # Ray 2.60's token auth, the token from KubeRay
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP and group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in groups:  # rayStartParams is map[string]string: a bare number would be refused
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    # One Ray, one code version on every node: the Ray this project runs, the image of this release.
    assert cluster["rayVersion"] == ray.__version__
    assert {c["image"] for c in _containers(cluster)} == {f"bge-m3-ray:{version('bge-m3-ray')}"}


def test_the_grpc_port_is_exposed_on_every_pod_and_the_serve_service(manifest, serve_config):
    port = serve_config["grpc_options"]["port"]
    cluster = manifest["spec"]["rayClusterConfig"]
    for container in _containers(cluster):
        assert {"containerPort": port, "name": "grpc"} in container["ports"], container["name"]
    service_ports = {p["name"]: p["targetPort"] for p in manifest["spec"]["serveService"]["spec"]["ports"]}
    assert service_ports == {"serve": serve_config["http_options"]["port"], "grpc": port}


def test_serve_config_v2_is_a_valid_serve_config_that_builds(serve_config, monkeypatch):
    """Serve's own schema takes it (one app, this project's builder, both deployments by their names), its
    args and the model's user_config are valid together, and the builder makes the ingress bound to the
    model deployment with exactly those args."""
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    [app] = ServeDeploySchema.model_validate(serve_config).applications
    assert (app.name, app.route_prefix, app.import_path) == ("bge-m3", "/", "serve_app.app:build_app")
    assert sorted(d.name for d in app.deployments) == sorted([MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT])
    args = AppArgs.model_validate(app.args)
    assert args.encoder.model == app.args["encoder"]["model"]  # the manifest's path, not an override
    model = next(d for d in serve_config["applications"][0]["deployments"] if d["name"] == MODEL_DEPLOYMENT)
    BatchingConfig.model_validate(model["user_config"]).check_holds(args.encoder.max_length)  # raises if not
    ingress = build_app(app.args)._bound_deployment
    bound_model, ingress_args = ingress.init_args
    assert ingress.name == INGRESS_DEPLOYMENT and ingress_args == args
    assert bound_model._bound_deployment.name == MODEL_DEPLOYMENT
    assert bound_model._bound_deployment.init_args == (args.encoder, args.cache)


def test_service_config_differs_only_where_documented(manifest, serve_config):
    reference = _leaves(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    shipped = _leaves(serve_config)
    differences = {k for k in reference.keys() | shipped.keys() if reference.get(k, "<absent>") != shipped.get(k)}
    # Exactly the documented set: nothing else drifted, and no documented difference went stale.
    assert differences == DOCUMENTED_DIFFERENCES, sorted(differences ^ DOCUMENTED_DIFFERENCES)

    cluster = manifest["spec"]["rayClusterConfig"]
    [gpu] = cluster["workerGroupSpecs"]
    [worker] = gpu["template"]["spec"]["containers"]
    assert shipped["http_options.host"] == "0.0.0.0"
    # The model is read from a volume every GPU pod mounts from a persistent volume claim.
    model_path = PurePosixPath(shipped[f"{APP}.args.encoder.model"])
    mount = next(m for m in worker["volumeMounts"] if model_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in gpu["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert "persistentVolumeClaim" in volume
    # Replicas fit the GPUs: the minimum on the pods always there, the maximum on the most pods.
    per_replica = shipped[f"{MODEL}.ray_actor_options.num_gpus"]
    per_pod = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert per_replica == 1 and per_pod >= per_replica
    low, high = shipped[f"{MODEL}.autoscaling_config.min_replicas"], shipped[f"{MODEL}.autoscaling_config.max_replicas"]
    assert 2 <= low <= gpu["minReplicas"] * per_pod // per_replica
    assert high == gpu["maxReplicas"] * per_pod // per_replica
    assert cluster.get("enableInTreeAutoscaling") is True  # else Serve's max_replicas never gets its pods
    # The head takes no work, so the ingress runs on the GPU pods: two of them, for a node loss.
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert shipped[f"{INGRESS}.autoscaling_config.min_replicas"] >= 2
    assert shipped[f"{INGRESS}.autoscaling_config.max_replicas"] == high
    # The model scales on queued tokens (its policy kept), at the multi-GPU preset's target per GPU.
    multi_gpu = _leaves(yaml.safe_load((ROOT / "configs" / "multi-gpu.yaml").read_text()))
    target = "autoscaling_config.policy.policy_kwargs.target_queued_tokens"
    assert shipped[f"{MODEL}.{target}"] == multi_gpu[f"{MODEL}.{target}"]
    assert shipped[f"{MODEL}.autoscaling_config.policy.policy_function"] == \
        reference[f"{MODEL}.autoscaling_config.policy.policy_function"]


def test_every_pod_gets_the_same_api_keys_and_no_model_override(manifest, serve_config):
    """An ingress may start on any pod and reads its keys there: a pod without them would serve without
    auth. BGE_M3_MODEL would override args.encoder.model wherever the app happens to be built."""
    [app] = serve_config["applications"]
    name = AppArgs.model_validate(app["args"]).auth.api_keys_env
    containers = _containers(manifest["spec"]["rayClusterConfig"])
    entries = [[e for e in c.get("env", []) if e["name"] == name] for c in containers]
    assert all(len(e) == 1 for e in entries) and all(e == entries[0] for e in entries), entries
    assert not [c["name"] for c in containers for e in c.get("env", []) if e["name"] == MODEL_ENV_VAR]
