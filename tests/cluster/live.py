"""Helpers for tests that run their own copy of the app on the session Ray cluster (tests/conftest.py): deploy it
under its own name and route, read the metrics a Ray node exports, count the replicas Serve runs.

Used by the Prometheus test here and the autoscaling / back-pressure tests in tests/deployments. Polling and the
HTTP client are tests/conftest.py's (`wait_for`, `ApiClient`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from cluster import monitoring
from cluster.monitoring import Samples, series
from tests.conftest import RAY_METRICS_PORT, TEST_STEPS, ApiClient, wait_for

GENERATOR = "VideoGenerator"
__all__ = [
    "ApiClient",
    "app_fixture",
    "dashboard_query",
    "deploy",
    "deployed",
    "prometheus_for_session",
    "replicas_running",
    "replicas_that_completed_jobs",
    "require_prometheus",
    "scrape",
    "series",
    "wait_for",
]


def deploy(name: str, route_prefix: str, store: str, **args: Any) -> ApiClient:
    """Run the app (tiny Latte, 2 workers per replica) as application `name` at `route_prefix`; wait until it serves."""
    from ray import serve

    from serve_app.entrypoints.builder import build_app
    from serve_app.config import AppConfig

    from tests.conftest import SERVE_HTTP_PORT

    config = AppConfig.model_validate(
        {
            "model": "tiny-latte",
            "sp_degree": 2,
            "defaults": {"num_inference_steps": TEST_STEPS},
            "storage": {"url": store},
            "poll_after_ms": 100,
            **args,
        }
    )
    serve.run(build_app(config), name=name, route_prefix=route_prefix, blocking=False)
    api = ApiClient(f"http://127.0.0.1:{SERVE_HTTP_PORT}{route_prefix}", api_key=None)
    wait_for(lambda: api.http.get("/v1/models").status_code == 200, 240, f"app {name} to serve /v1/models", 0.5)
    return api


@contextlib.contextmanager
def deployed(name: str, route_prefix: str, tmp_path_factory: Any, **args: Any) -> Iterator[ApiClient]:
    """`deploy` with a fresh job store; deletes the application on exit (tests' module fixtures)."""
    from ray import serve

    api = deploy(name, route_prefix, str(tmp_path_factory.mktemp(name)), **args)
    try:
        yield api
    finally:
        serve.delete(name)


def app_fixture(name: str, route_prefix: str, **args: Any) -> Any:
    """A module-scoped pytest fixture `app` (an `ApiClient`) serving the app with `args` as `name`."""
    import pytest

    @pytest.fixture(scope="module")
    def app(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
        with deployed(name, route_prefix, tmp_path_factory, **args) as api:
            yield api

    return app


def scrape(port: int = RAY_METRICS_PORT) -> Samples:
    """The samples a Ray node exports on its metrics port (the session cluster's head by default)."""
    return monitoring.scrape(f"http://127.0.0.1:{port}/metrics")


def replicas_running(app: str, deployment: str = GENERATOR) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def replicas_that_completed_jobs(app: str) -> set[str]:
    """Generator replicas whose `ray_pab_jobs_total{status="completed"}` is above 0 (Serve tags each replica)."""
    rows = series(scrape(), "ray_pab_jobs_total", application=app, status="completed")
    return {lab["replica"] for lab, v in rows if v > 0}


def require_prometheus() -> None:
    """Skip without Debian's prometheus, or fail under CI, where scripts/setup.sh --test must have installed it."""
    import os

    import pytest

    if monitoring.find_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the prometheus binary is missing under CI: scripts/setup.sh must install it")
        pytest.skip("Prometheus is not installed (apt-get install -y prometheus)")


@contextlib.contextmanager
def prometheus_for_session(tmp_path_factory: Any) -> Iterator[monitoring.PrometheusServer]:
    """A Prometheus (cluster/prometheus.yml and its alert rules) scraping the session Ray cluster every second."""
    import ray

    from cluster.local_cluster import free_port

    require_prometheus()
    # The session dir holds this cluster's SD file (the /tmp/ray symlink may be another local cluster's).
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    server = monitoring.start(port=free_port(), data_dir=tmp_path_factory.mktemp("prometheus"),
                              ray_temp_dir=session_dir, scrape_interval="1s")
    try:
        yield server
    finally:
        server.stop()


def dashboard_query(server: monitoring.PrometheusServer, expr: str, application: str) -> list[dict]:
    """Run a dashboard expression with its Grafana variables filled in for one application."""
    for var, value in {"$__rate_interval": "10m", "$application": application, "$model": ".*", "$preset": ".*",
                       "$Cluster": ".*"}.items():
        expr = expr.replace(var, value)
    return server.query(expr)
