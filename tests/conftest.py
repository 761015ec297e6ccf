"""Session fixtures shared by every test package.

`ray_cluster` starts ONE local Ray cluster for the whole test session, the first time a test asks for it (tests that
never ask start nothing), and `serve_http` starts Serve's HTTP proxy on it. Ray opens ports, so these tests must run
inside the loopback-only namespace:

    ../shared/bin/loopback-only .venv/bin/python -m pytest tests/deployments tests/serve_app

Outside it the fixtures skip the tests that need them (with the reason above).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

RAY_NUM_CPUS = 6
"""Logical CPUs of the test cluster: 2 generator replicas x 2 workers x 0.5 CPU, the ingress and headroom (the
machine has 2 cores; bundles and actors are fractional)."""
SERVE_HTTP_PORT = 8000
RAY_METRICS_PORT = 8080
"""Every node exports Prometheus metrics here (`ray start --metrics-export-port` in production)."""

# Set before Ray starts so its daemons, the Serve controller and every replica inherit them.
RAY_TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    # Autoscaling metrics every second instead of every 10 s, so autoscaling tests see load quickly.
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    # Custom metrics reach the metrics export port after 1 s instead of 10 s (tests/cluster's Prometheus test).
    "RAY_metrics_report_interval_ms": "1000",
}


def in_loopback_namespace() -> bool:
    """True inside `../shared/bin/loopback-only`, where loopback is the only network interface."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _require_loopback() -> None:
    if not in_loopback_namespace():
        pytest.skip("needs Ray: run inside ../shared/bin/loopback-only (e.g. "
                    "../shared/bin/loopback-only .venv/bin/python -m pytest tests/deployments)")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray cluster for the session (started lazily, stopped at the end)."""
    _require_loopback()
    os.environ.update(RAY_TEST_ENV)
    import ray

    context = ray.init(
        num_cpus=RAY_NUM_CPUS,
        # The dashboard writes Prometheus' service-discovery file (tests/cluster scrapes through it).
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        namespace="pab-tests",
        logging_level="WARNING",
        log_to_driver=False,
        _metrics_export_port=RAY_METRICS_PORT,
    )
    yield context
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_http(ray_cluster: Any) -> str:
    """Serve's HTTP proxy on 127.0.0.1; returns its base URL (apps are added by the tests that need them)."""
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_HTTP_PORT})
    return f"http://127.0.0.1:{SERVE_HTTP_PORT}"


# ---- the pab Videos API app, deployed once per session ----------------------------------------------------------
TEST_API_KEY = "sk-pab-test"
PAB_INGRESS_ACTOR = "SERVE_REPLICA::pab#VideoIngress#"
"""Name prefix of the `pab_app` ingress replicas' actors (other apps' ingresses run beside them)."""
TEST_STEPS = 8
"""Default denoising steps of the test app: enough for PAB to broadcast inside the reference window."""


@dataclass
class PabApp:
    """The deployed test app: where it listens, how it is configured and its job store."""

    url: str
    config: Any
    store: Any
    store_path: Path

    def client(self, api_key: str | None = TEST_API_KEY) -> "ApiClient":
        return ApiClient(self.url, api_key)

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
        return wait_for(predicate, timeout, what, interval)


class ApiClient:
    """A thin httpx client for the Videos API with the waiting loop every test needs."""

    def __init__(self, url: str, api_key: str | None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)

    def create(self, **fields: Any) -> dict[str, Any]:
        response = self.http.post("/v1/videos", json=fields)
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, video_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/videos/{video_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, video_id: str, timeout: float = 180.0, until: Callable[[dict], bool] | None = None) -> dict:
        """Poll until the job is terminal (or `until(video)` holds); fails the test after `timeout` seconds."""
        until = until or (lambda v: v["status"] in ("completed", "failed"))
        deadline = time.monotonic() + timeout
        while True:
            video = self.get(video_id)
            if until(video):
                return video
            assert time.monotonic() < deadline, f"job {video_id} stuck at {video['status']} {video['progress']}%"
            time.sleep(0.02)

    def content(self, video_id: str, variant: str = "video") -> bytes:
        response = self.http.get(f"/v1/videos/{video_id}/content", params={"variant": variant})
        assert response.status_code == 200, response.text
        return response.content


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Return the first truthy `predicate()`; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # e.g. the service restarting between two polls
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(interval)


def _deploy(name: str, route: str, url: str, store_dir: str, **fields: Any) -> PabApp:
    """Deploy one test app: 2 CPU workers per replica, the test key, quick health checks and polls, `fields` on top."""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.entrypoints.builder import build_app
    from serve_app.store import JobStore

    config = AppConfig(**{
        "sp_degree": 2,
        "api_key": TEST_API_KEY,
        "defaults": {"num_inference_steps": TEST_STEPS},
        "health_check_period_s": 1.0,
        "collective_timeout_s": 60.0,
        "poll_after_ms": 100,
        "min_poll_after_ms": 20,
        "storage": {"url": store_dir, "progress_interval_s": 0.0},
        **fields,
    })
    serve.run(build_app(config), name=name, route_prefix=route)
    return PabApp(url=url + route.rstrip("/"), config=config, store=JobStore(store_dir), store_path=Path(store_dir))


@pytest.fixture(scope="session")
def pab_app(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PabApp]:
    """The Videos API with the tiny Latte on 2 CPU workers per replica, an API key, and small limits."""
    from ray import serve

    from serve_app.entrypoints.builder import APP_NAME

    yield _deploy(
        APP_NAME, "/", serve_http, str(tmp_path_factory.mktemp("pab-store")),
        model="tiny-latte",
        limits={"max_frames": 16, "max_pixels": 64 * 64, "max_steps": 400, "max_work": 8 * 32 * 32 * 400},
        hold_poll_ms=300,  # the last 0.3 s of a job answer on completion; before that, every step's progress shows
        engine={"lease_s": 10.0},  # a job whose runner died is taken over within 10 s
    )
    serve.delete(APP_NAME)


ALICE_KEY = "sk-pab-alice"
SHAPES_APP = "pab-shapes"
SHAPES_ROUTE = "/shapes"


@pytest.fixture(scope="session")
def shapes_app(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PabApp]:
    """A second app: the served default model (the trained tiny-shapes, whose pipeline batches exactly) on 2 CPU
    workers, with batches of at most 3 jobs; its API under /shapes/v1/..."""
    from ray import serve

    yield _deploy(
        SHAPES_APP, SHAPES_ROUTE, serve_http, str(tmp_path_factory.mktemp("shapes-store")),
        model="tiny-shapes",
        engine={"max_batch_size": 3, "batch_wait_ms": 100, "lease_s": 10.0},
        max_ongoing_requests=12,
        # a second tenant beside the single key's "default" one, by its key's hash (no secret in the config)
        api_keys=[{"tenant": "alice", "key_sha256": hashlib.sha256(ALICE_KEY.encode()).hexdigest(),
                   "max_queued_jobs": 2}],
    )
    serve.delete(SHAPES_APP)
