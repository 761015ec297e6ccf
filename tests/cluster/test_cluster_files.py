"""Offline checks of cluster/: the dashboard file is current, the Prometheus config, the VM launcher config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cluster import dashboard, monitoring

REPO = Path(__file__).resolve().parents[2]


def test_dashboard_file_is_current() -> None:
    assert dashboard.DASHBOARD_PATH.read_text() == dashboard.render_text(), "run `python -m cluster.dashboard --write`"


def test_dashboard_has_a_datasource_variable_used_by_every_panel_and_query() -> None:
    model = json.loads(dashboard.DASHBOARD_PATH.read_text())
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in model["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    # Panels tile a 24-column grid without overlapping.
    cells = set()
    for p in model["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        new = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & new, p["title"]
        cells |= new


def test_dashboard_covers_what_operators_asked_for() -> None:
    exprs = "\n".join(dashboard.expressions())
    for metric in (
        "ray_pab_attention_broadcasts_total",  # hit rate per kind
        "ray_pab_mlp_broadcasts_total",
        "ray_pab_generation_latency_seconds_bucket",  # p50/p95/p99
        "ray_pab_queue_depth",
        "ray_serve_deployment_replica_healthy",  # replicas (Serve's own)
        "ray_serve_deployment_queued_queries",
        "ray_pab_jobs_total",  # throughput, failures
        "ray_pab_frames_generated_total",
        "ray_pab_collective_bytes_total",  # comm bytes saved
        "ray_pab_jobs_rejected_total",
    ):
        assert metric in exprs, metric
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in exprs


def test_every_dashboard_metric_is_one_deployments_metrics_defines() -> None:
    """Names in the dashboard and in deployments/metrics.py cannot drift apart."""
    import re

    from deployments import metrics

    defined = {f"ray_{name}" for name in metrics.exported_names()}
    used = set(re.findall(r"\bray_pab_[a-z_]+", "\n".join(dashboard.expressions())))
    stripped = {re.sub(r"_(bucket|count|sum)$", "", u) for u in used}
    assert stripped <= defined, stripped - defined


def test_prometheus_config_points_at_the_ray_service_discovery_file(tmp_path: Path) -> None:
    config = monitoring.render_config(tmp_path / "ray", "2s")
    assert config["global"]["scrape_interval"] == "2s"
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [str((tmp_path / "ray").resolve() / monitoring.SD_FILE_NAME)]
    template = yaml.safe_load(monitoring.TEMPLATE_PATH.read_text())
    default_sd_file = "/tmp/ray/prom_metrics_service_discovery.json"
    assert template["scrape_configs"][0]["file_sd_configs"][0]["files"] == [default_sd_file]


def test_start_fails_clearly_without_the_binary(tmp_path: Path) -> None:
    with pytest.raises(monitoring.MonitoringError, match="apt-get install -y prometheus"):
        monitoring.start(data_dir=tmp_path, binary="no-such-prometheus-binary")


def test_vm_launcher_config_validates_with_rays_schema_and_fits_a_gpu_replica() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    from serve_app.config import AppConfig

    raw = yaml.safe_load((REPO / "cluster" / "ray-cluster-aws-gpu.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    worker = config["available_node_types"]["gpu-worker"]
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert all("--metrics-export-port=8080" in c for c in (config["head_start_ray_commands"][1],
                                                           config["worker_start_ray_commands"][1]))
    (app,) = yaml.safe_load((REPO / "cluster" / "serve-gpu.yaml").read_text())["applications"]
    app_config = AppConfig.model_validate(app["args"])
    bundles = app_config.placement_group_bundles()
    assert sum(b["GPU"] for b in bundles) == worker["resources"]["GPU"], "one replica per GPU VM"
    assert sum(b["CPU"] for b in bundles) <= worker["resources"]["CPU"]
    assert app["args"]["autoscaling_config"]["max_replicas"] <= worker["max_workers"]
