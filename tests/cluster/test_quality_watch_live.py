"""The quality watch on a served app (the trained tiny-shapes model, 2 workers per replica) on the session Ray cluster.

- A PAB job's live sample is the figure `bench/quality.py` computes for the same request (`run_config`, in this
  process, on one device): PSNR within 0.5 dB; Ray exports it (`ray_pab_quality_*`).
- The app's floor is forced above any PAB video (200 dB), so after `min_samples` samples of the default preset,
  jobs naming no preset run with the fallback, and a real Prometheus loading `cluster/pab-alerts.yml` fires
  `PABQualityBelowFloor`; the dashboard's quality panels return data.

Unit-level behaviour (preemption, recovery, sampling): tests/deployments/test_quality_watch.py.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from typing import Iterator

import pytest

from cluster import dashboard, monitoring
from tests.cluster.live import (ApiClient, dashboard_query, deployed, prometheus_for_session, scrape, series,
                                wait_for)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP, ROUTE = "pab-quality", "/quality-app"
STEPS = 8
WATCH = {"sample_rate": 1.0, "floor_psnr_db": 200.0, "fallback_preset": "PAB-246", "min_samples": 2, "window": 4}


@pytest.fixture(scope="module")
def app(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    args = {"model": "tiny-shapes", "pab_preset": "reference", "defaults": {"num_inference_steps": STEPS},
            "quality_watch": WATCH}
    with deployed(APP, ROUTE, tmp_path_factory, **args) as api:
        yield api


def _watch_state() -> dict:
    from ray import serve

    return serve.get_deployment_handle("VideoGenerator", app_name=APP).describe.remote().result()["quality_watch"]


def _sample_of(job_id: str) -> dict | None:
    return next((s for s in _watch_state()["status"]["recent"] if s["job_id"] == job_id and not s["probe"]), None)


def test_a_served_sample_is_the_offline_figure_for_the_same_seed(app) -> None:
    from pab.runtime.pipelines import VideoGenerator, load_pipeline
    from pab.runtime.tools.quality import run_config

    api = app
    prompt, seed = "a green triangle moving right", 11
    video = api.wait(api.create(prompt=prompt, seed=seed, pab="PAB-246")["id"])
    assert video["status"] == "completed" and video["pab"]["name"] == "PAB-246"
    sample = wait_for(lambda: _sample_of(video["id"]), 120, "the quality watch to measure the job")

    generator = VideoGenerator(load_pipeline("tiny-shapes"))
    params = {"num_inference_steps": STEPS}
    _, (full,) = run_config(generator, [(prompt, seed)], "none", **params)
    offline, _ = run_config(generator, [(prompt, seed)], "PAB-246", [full], **params)
    assert math.isfinite(offline.psnr) and sample["psnr_db"] < 100, "PAB-246 must change the video for this to test"
    print(f"served sample: PSNR {sample['psnr_db']:.3f} dB, SSIM {sample['ssim']:.4f}; offline (bench/quality.py's "
          f"run_config): PSNR {offline.psnr:.3f} dB, SSIM {offline.ssim:.4f}")  # shown with pytest -rP
    assert sample["psnr_db"] == pytest.approx(offline.psnr, abs=0.5)
    assert sample["ssim"] == pytest.approx(offline.ssim, abs=0.02)

    def exported() -> list:
        return series(scrape(), "ray_pab_quality_samples_total", application=APP, preset="PAB-246")

    (labels, count), = wait_for(exported, 60, "Ray to export the sample")
    assert count >= 1 and labels["model"] == "tiny-shapes"
    counts = series(scrape(), "ray_pab_quality_psnr_db_count", application=APP, preset="PAB-246")
    assert sum(v for _, v in counts) == count


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def _rule_health(server: monitoring.PrometheusServer) -> str | None:
    with urllib.request.urlopen(f"{server.url}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    return {r["name"]: r["health"] for g in groups for r in g["rules"]}.get("PABQualityBelowFloor")


def _alert_state(server: monitoring.PrometheusServer) -> str | None:
    with urllib.request.urlopen(f"{server.url}/api/v1/alerts", timeout=10) as resp:
        alerts = json.load(resp)["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"].get("alertname") == "PABQualityBelowFloor"
              and a["labels"].get("application") == APP]
    return states[0] if states else None


def test_below_the_floor_default_jobs_run_the_fallback_and_the_alert_fires(app, tmp_path_factory) -> None:
    api = app
    with prometheus_for_session(tmp_path_factory) as prometheus:
        # cluster/pab-alerts.yml, loaded as it is, evaluates without error; the samples below happen while
        # Prometheus scrapes, so the dashboard's rates see them
        wait_for(lambda: _rule_health(prometheus) == "ok", 30, "the alert rule to be evaluated")
        wait_for(lambda: prometheus.query('count(up{job="ray"} == 1)'), 60, "Prometheus to scrape the Ray head")
        for seed in (1, 2):  # min_samples of the default preset
            default = api.wait(api.create(prompt="a red square moving left", seed=seed)["id"])
            assert default["pab"]["name"] == "reference:latte"
        wait_for(lambda: _watch_state()["status"]["fallback_active"], 180, "the fallback to start")
        time.sleep(2.5)  # the ingress re-reads the quality state every 2 s
        fallback = api.create(prompt="a red square moving left", seed=3)
        assert fallback["pab"]["name"] == "PAB-246"  # a job naming no preset now runs with the fallback
        explicit = api.create(prompt="a red square moving left", seed=4, pab="reference")
        assert explicit["pab"]["name"] == "reference:latte"  # a preset the client names is kept
        for job in (fallback, explicit):
            assert api.wait(job["id"])["status"] == "completed"
        shown = api.http.get("/playground/model").json()  # what the playground shows beside the model's name
        assert shown["preset_now"] == "PAB-246" and shown["quality"]["fallback_active"] is True

        wait_for(lambda: _alert_state(prometheus) in ("pending", "firing"), 60, "the alert to be pending")
        for expr in dashboard.expressions(dashboard.QUALITY_PANELS):
            wait_for(lambda e=expr: _finite(dashboard_query(prometheus, e, APP)), 60, f"data for {expr}")
        wait_for(lambda: _alert_state(prometheus) == "firing", 120, "the alert to fire (for: 1m)", interval=2)
        gauge = prometheus.query(f'last_over_time(ray_pab_quality_fallback_active{{application="{APP}"}}[1m])')
        assert {(r["metric"]["preset"], r["value"][1]) for r in gauge} == {("reference:latte", "1")}
