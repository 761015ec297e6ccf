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
    "deploy",
    "deployed",
    "replicas_running",
    "replicas_that_completed_jobs",
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
