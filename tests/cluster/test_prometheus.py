"""A real Prometheus (Debian's package), configured by cluster/prometheus.yml through Ray's service-discovery file,
scrapes the session Ray cluster running the app: every PromQL expression of the Grafana dashboard returns data,
and the hit rate and communication bytes Prometheus reports equal those in the jobs' own stats.

Run: ../shared/bin/loopback-only .venv/bin/python -m pytest tests/cluster/test_prometheus.py
"""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from cluster import dashboard, monitoring
from cluster.local_cluster import free_port
from tests.cluster.live import (ApiClient, app_fixture, dashboard_query, prometheus_for_session,
                                require_prometheus, wait_for)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "pab-metrics"
KINDS = ("spatial", "temporal", "cross")


@pytest.fixture(scope="module")
def prometheus(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[monitoring.PrometheusServer]:
    with prometheus_for_session(tmp_path_factory) as server:
        yield server


app = app_fixture(
    APP,
    "/metrics-app",
    autoscaling_config={"min_replicas": 1, "max_replicas": 1},  # Serve exports its autoscaling target too
    queue={"max_jobs": 2, "retry_after_s": 1},
)


def _query(server: monitoring.PrometheusServer, expr: str) -> list[dict]:
    return dashboard_query(server, expr, APP)


def _scalar(server: monitoring.PrometheusServer, expr: str) -> float | None:
    result = server.query(expr)
    return float(result[0]["value"][1]) if result else None


def _assert_hit_rates_match(prometheus: monitoring.PrometheusServer, stats: list[dict]) -> None:
    """The dashboard's hit-rate expressions, run by Prometheus, equal the rates the jobs' own stats give."""
    (panel,) = [p for p in dashboard.PANELS if p.title == "PAB hit rate since replica start"]
    by_kind, overall, mlp = (t.expr for t in panel.targets)
    reported = {r["metric"]["kind"]: float(r["value"][1]) for r in _query(prometheus, by_kind)}
    expected = {}
    for kind in KINDS:
        calls = sum(s["kinds"][kind]["calls"] for s in stats)
        if calls:
            expected[kind] = sum(s["kinds"][kind]["broadcast"] for s in stats) / calls
    assert reported == pytest.approx(expected, rel=1e-9)
    assert any(rate > 0 for rate in expected.values()), "PAB broadcast nothing: the test app must use a preset"
    attention = [s["attention"] for s in stats]
    assert float(_query(prometheus, overall)[0]["value"][1]) == pytest.approx(
        sum(a["broadcast"] for a in attention) / sum(a["calls"] for a in attention), rel=1e-9
    )
    mlp_calls = sum(s["kinds"]["mlp"]["calls"] for s in stats)
    if mlp_calls:
        assert float(_query(prometheus, mlp)[0]["value"][1]) == pytest.approx(
            sum(s["kinds"]["mlp"]["broadcast"] for s in stats) / mlp_calls, rel=1e-9
        )


def test_dashboard_queries_return_data_and_hit_rate_matches_the_jobs_stats(
    prometheus: monitoring.PrometheusServer, app: ApiClient
) -> None:
    jobs_seen = f'sum(ray_pab_jobs_total{{application="{APP}",status="completed"}})'
    # Ray's head is a scrape target found through the SD file.
    wait_for(lambda: _scalar(prometheus, 'count(up{job="ray"} == 1)'), 60, "Prometheus to scrape the Ray head")

    # Two phases, so every rate() in the dashboard sees its counters move.
    first = app.create(prompt="a red fox", seed=1)
    videos = [app.wait(first["id"])]
    wait_for(lambda: _scalar(prometheus, jobs_seen) == 1, 60, "Prometheus to see the first job")

    with ThreadPoolExecutor(3) as pool:  # one more than queue.max_jobs: one 429
        responses = list(
            pool.map(lambda i: app.http.post("/v1/videos", json={"prompt": f"cat {i}", "seed": i}), range(3))
        )
    assert sorted(r.status_code for r in responses) == [200, 200, 429]
    videos += [app.wait(r.json()["id"]) for r in responses if r.status_code == 200]
    assert [v["status"] for v in videos] == ["completed"] * 3
    wait_for(lambda: _scalar(prometheus, jobs_seen) == 3, 60, "Prometheus to see all three jobs")
    wait_for(
        lambda: _scalar(prometheus, f'sum(ray_pab_jobs_rejected_total{{application="{APP}"}})') == 1,
        60,
        "Prometheus to see the 429",
    )

    # The hit rates Prometheus computes with the dashboard's own expressions equal the jobs' stats.
    stats = [v["stats"] for v in videos]
    _assert_hit_rates_match(prometheus, stats)

    # Collective bytes issued and skipped add up to the jobs' own accounting.
    comm = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in prometheus.query(f'sum by (outcome) (ray_pab_collective_bytes_total{{application="{APP}"}})')
    }
    assert comm == {
        "issued": sum(s["comm"]["issued_bytes"] for s in stats),
        "skipped": sum(s["comm"]["skipped_bytes"] for s in stats),
    }
    assert comm["skipped"] > 0

    # Every expression of every job panel returns at least one finite value (the quality panels need the quality
    # watch on: tests/cluster/test_quality_watch_live.py).
    empty = []
    for expr in dashboard.expressions(dashboard.JOB_PANELS):
        values = [float(r["value"][1]) for r in _query(prometheus, expr)]
        if not any(math.isfinite(v) for v in values):
            empty.append(expr)
    names = prometheus.query('count by (__name__, application) ({__name__=~"ray_(pab|serve_deployment_queued).*"})')
    assert empty == [], f"no data for: {empty}; series present: {[r['metric'] for r in names]}"


def test_start_monitoring_script_starts_a_ready_prometheus_and_stops_it(tmp_path) -> None:
    """The one command of cluster/start-monitoring.sh, end to end (no Ray needed: the SD file may not exist yet)."""
    import subprocess
    import urllib.request

    from tests.conftest import REPO_ROOT, in_loopback_namespace

    if not in_loopback_namespace():
        pytest.skip("opens a port: run inside ../shared/bin/loopback-only")
    require_prometheus()
    port, data = free_port(), tmp_path / "prom"
    script = [str(REPO_ROOT / "cluster" / "start-monitoring.sh"), "--data-dir", str(data)]
    env = {**os.environ, "PYTHON": sys.executable}
    started = subprocess.run(
        script + ["--port", str(port), "--ray-temp-dir", str(tmp_path / "ray")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    pid = int((data / "prometheus.pid").read_text())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as resp:
            assert resp.status == 200
        config = (data / "prometheus.yml").read_text()
        assert str((tmp_path / "ray").resolve() / monitoring.SD_FILE_NAME) in config
    finally:
        stopped = subprocess.run(script + ["--stop"], capture_output=True, text=True, env=env, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 15, "Prometheus to exit after --stop")
