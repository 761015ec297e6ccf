"""The manifests in k8s/ are current, valid for KubeRay and Kubernetes, and carry a serve config our code accepts.

All offline: the RayService CRD is a copy in tests/k8s/schemas (see its SOURCE.md), core objects are checked with
kubernetes-validate's bundled official schemas (strict: unknown fields fail, as `kubectl apply --validate=strict`).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRD = Path(__file__).parent / "schemas" / "kuberay" / "ray.io_rayservices.yaml"
K8S_VERSION = "1.30.0"  # validate against an API version KubeRay 1.x clusters run; the fields used are older still


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _documents(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / rel).read_text()) if d]


def _kustomize(directory: str) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` for what our kustomizations use: a plain list of resources."""
    kustomization = yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, "only plain resource lists are rendered here"
    return [doc for rel in kustomization["resources"] for doc in _documents(f"{directory}/{rel}")]


ALL_DIRS = ["cpu", "gpu", "monitoring"]
RAYSERVICES = {v.name: _kustomize(v.name)[0] for v in gen.VARIANTS}


@cache
def _crd_schema() -> dict[str, Any]:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB of YAML
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields the structural schema does not declare: the API server would silently drop them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                yield from _unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from _unknown_fields(item, extra, f"{path}.{key}")
            elif props is not None:
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{i}]")


def test_rendered_manifests_are_current() -> None:
    assert gen.main(["--check"]) == 0, "run `python k8s/generate.py` and commit the result"


def test_every_kustomization_lists_every_manifest_of_its_directory() -> None:
    for directory in ALL_DIRS:
        listed = set(yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())["resources"])
        present = {p.name for p in (K8S / directory).glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, directory


@pytest.mark.parametrize("variant", sorted(RAYSERVICES))
def test_rayservice_validates_against_the_kuberay_crd(variant: str) -> None:
    doc = RAYSERVICES[variant]
    jsonschema.Draft7Validator(_crd_schema()).validate(doc)
    assert list(_unknown_fields(doc, _crd_schema())) == []


def test_crd_validation_can_fail() -> None:
    """The checks above catch a wrong type and a misspelt field (so a pass means something)."""
    doc = yaml.safe_load(yaml.safe_dump(RAYSERVICES["cpu"]))
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_crd_schema()).validate(doc)
    doc = yaml.safe_load(yaml.safe_dump(RAYSERVICES["cpu"]))
    doc["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert list(_unknown_fields(doc, _crd_schema())) == [".spec.rayClusterConfig.enableInTreeAutoscalling"]


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = doc["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield "worker", group["template"]


def _core_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for directory in ALL_DIRS:
        for doc in _kustomize(directory):
            if doc["apiVersion"] in ("v1", "apps/v1"):
                yield f"{directory}/{doc['kind']}", doc
    for variant, doc in RAYSERVICES.items():
        for role, template in _pod_templates(doc):
            # A RayService's pod templates are core PodTemplateSpecs: validate them as a PodTemplate object.
            yield f"{variant}/{role}-template", {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{variant}-{role}"},
                "template": template,
            }


@pytest.mark.parametrize("name,doc", list(_core_objects()), ids=lambda x: x if isinstance(x, str) else "")
def test_core_objects_validate_against_kubernetes_schemas(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_core_validation_can_fail() -> None:
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": {"spec": {
        "containers": [{"name": "c", "image": "i", "resources": {"limit": {"cpu": "1"}}}]}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(RAYSERVICES))
def test_serve_config_parses_with_ray_serve_schema_and_resolves_to_our_builder(variant: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve_app.entrypoints.builder import build_app, generator_options
    from serve_app.config import AppConfig

    serve_config = yaml.safe_load(RAYSERVICES[variant]["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(serve_config)
    (app,) = schema.applications
    module_name, attr = app.import_path.split(":")
    assert getattr(importlib.import_module(module_name), attr) is build_app
    config = AppConfig.model_validate(app.args)
    options = generator_options(config)
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["autoscaling_config"]["target_ongoing_requests"] == 1


@pytest.mark.parametrize("variant", sorted(RAYSERVICES))
def test_a_generator_replica_fits_one_worker_pod_and_autoscaling_can_reach_max(variant: str) -> None:
    """The STRICT_PACK placement group of one replica must fit a worker pod, or autoscaling adds pods forever."""
    from serve_app.config import AppConfig

    doc = RAYSERVICES[variant]
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    config = AppConfig.model_validate(app["args"])
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no generator work on the head"
    (group,) = cluster["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    pod_cpus = float(limits["cpu"])
    pod_gpus = int(limits.get("nvidia.com/gpu", 0))
    bundles = config.placement_group_bundles()
    need_cpus = sum(b["CPU"] for b in bundles)
    need_gpus = sum(b.get("GPU", 0) for b in bundles)
    assert need_cpus <= pod_cpus and need_gpus <= pod_gpus
    if need_gpus:
        assert need_gpus == pod_gpus, "one GPU replica per pod: sp_degree * cfg_degree must equal the pod's GPUs"
        assert "GPU" not in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    replicas_per_pod = math.floor(pod_cpus / need_cpus) if not need_gpus else 1
    max_replicas = app["args"]["autoscaling_config"]["max_replicas"]
    assert max_replicas <= group["maxReplicas"] * replicas_per_pod


def test_dashboard_configmap_embeds_the_exact_dashboard_json() -> None:
    (configmap,) = [d for d in _kustomize("monitoring") if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = REPO / "cluster" / "grafana" / "pab-serve-dashboard.json"
    assert configmap["data"] == {dashboard.name: dashboard.read_text()}


def test_prometheus_rule_carries_the_alert_file_and_is_selected_like_the_pod_monitors() -> None:
    docs = _kustomize("monitoring")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((REPO / "cluster" / "pab-alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"] and alerts["groups"]
    release = {m["metadata"]["labels"]["release"] for m in docs if m["kind"] == "PodMonitor"}
    assert {rule["metadata"]["labels"]["release"]} == release


def test_pod_monitors_select_the_ray_pods_and_name_their_ports() -> None:
    monitors = [d for d in _kustomize("monitoring") if d["kind"] == "PodMonitor"]
    assert sorted(m["spec"]["selector"]["matchLabels"]["ray.io/node-type"] for m in monitors) == ["head", "worker"]
    for doc in RAYSERVICES.values():
        for role, template in _pod_templates(doc):
            # KubeRay adds ray.io/node-type to each pod it creates from the template.
            labels = {**template["metadata"]["labels"], "ray.io/node-type": role}
            (monitor,) = [m for m in monitors if m["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, (role, endpoint["port"])
                (relabel,) = endpoint["relabelings"]
                assert relabel["targetLabel"] == "ray_io_cluster"
    # Every series of the dashboard can be filtered by that label.
    from cluster.dashboard import expressions

    pab_queries = [e for e in expressions() if "ray_pab_" in e or "ray_serve_" in e]
    assert pab_queries and all('ray_io_cluster=~"$Cluster"' in e for e in pab_queries)


@pytest.mark.parametrize("variant", sorted(RAYSERVICES))
def test_public_http_always_has_a_key_from_a_required_secret_on_every_ray_container(variant: str) -> None:
    """The pods listen on 0.0.0.0 (Services reach them there), so the API must have a key, and a pod must not start
    without it: the key comes from a Secret that is not optional, on every node (a proxy runs on each)."""
    from serve_app.config import AppConfig
    from serve_app.safety import UnsafeBindError, check_bind, is_loopback

    doc = RAYSERVICES[variant]
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    host = serve_config["http_options"]["host"]
    (app,) = serve_config["applications"]
    config = AppConfig.model_validate(app["args"])
    check_bind(host, config)  # what build_app checks when KubeRay deploys the app
    assert not is_loopback(host) and config.api_key is None, "no literal key in a manifest"
    with pytest.raises(UnsafeBindError):
        check_bind(host, AppConfig.model_validate({k: v for k, v in app["args"].items() if k != "api_key_env"}))
    for _, template in _pod_templates(doc):
        for container in template["spec"]["containers"]:
            (env,) = [e for e in container["env"] if e["name"] == config.api_key_env]
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == gen.SECRETS and not ref.get("optional", False)


@pytest.mark.parametrize("variant", sorted(RAYSERVICES))
def test_rays_own_listeners_require_rays_token(variant: str) -> None:
    """The dashboard (and Jobs API), GCS and Serve's replica gRPC listeners bind beyond loopback on a pod; Ray token
    auth makes them refuse calls without the cluster's token. No explicit public dashboard-host either."""
    cluster = RAYSERVICES[variant]["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host") in (None, "127.0.0.1", "localhost")
    for group in cluster["workerGroupSpecs"]:
        assert "dashboard-host" not in group["rayStartParams"]
