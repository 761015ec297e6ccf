"""The whole server SIGKILLed mid-job and started again on the same store (issue 12's fault run): every accepted job
completes, none is lost or stuck, and the one that was running runs again (attempt 2) rather than twice at once.

`pab serve` runs as its own process with its own in-process Ray (not the session cluster), so it can be killed
outright; Ray fate-shares its head processes with it, and the test also signals the process group it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TEST_API_KEY, in_loopback_namespace, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PORT = 8124


def _start(store: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join the session cluster
    env.update(RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", PAB_TEST_KEY=TEST_API_KEY)
    command = [sys.executable, "-m", "serve_app.entrypoints.cli", "serve", "--port", str(PORT), "--num-cpus", "3",
               "model=tiny-shapes", f"storage.url={store}", "storage.progress_interval_s=0.1", "engine.lease_s=5",
               "api_key_env=PAB_TEST_KEY", "defaults.num_inference_steps=8"]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill(server: subprocess.Popen) -> None:
    """SIGKILL the server and everything of the process group it leads (started by this test)."""
    for target in (lambda: os.killpg(server.pid, signal.SIGKILL), server.kill):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    server.wait(timeout=60)


def _client():
    import httpx

    return httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=30,
                        headers={"Authorization": f"Bearer {TEST_API_KEY}"})


def _ready(http) -> bool:
    try:
        return http.get("/v1/models").status_code == 200
    except Exception:  # not listening yet
        return False


def test_a_sigkilled_server_restarted_on_the_same_store_finishes_every_job(tmp_path):
    if not in_loopback_namespace():
        pytest.skip("opens ports: run inside scripts/loopback-only")
    store, log = tmp_path / "store", tmp_path / "server.log"
    server = _start(store, log)
    try:
        with _client() as http:
            wait_for(lambda: _ready(http), 240, "the first server to serve", interval=1.0)
            ids = [http.post("/v1/videos", json={"prompt": "a red square moving left", "steps": 120, "seed": i,
                                                 "size": "32x32"}).raise_for_status().json()["id"] for i in range(3)]
            wait_for(lambda: http.get(f"/v1/videos/{ids[0]}").json()["progress"] > 0, 120, "the first job to run")
            _kill(server)
            server = _start(store, log)
            wait_for(lambda: _ready(http), 240, "the restarted server to serve", interval=1.0)
            finished = wait_for(lambda: _all_done(http, ids), 300, "every job to finish", interval=1.0)
    finally:
        _kill(server)
    assert [v["status"] for v in finished] == ["completed"] * 3, [v["error"] for v in finished] + [log.read_text()[-3000:]]
    for video in finished:
        claims = sorted(p.name for p in (store / "videos" / video["id"] / "claims").iterdir())
        assert claims == [str(n) for n in range(1, video["attempt"] + 1)]  # one runner per attempt
    assert max(v["attempt"] for v in finished) == 2  # the running job ran again after the kill


def _all_done(http, ids: list[str]) -> list[dict] | None:
    videos = [http.get(f"/v1/videos/{i}").json() for i in ids]
    return videos if all(v["status"] in ("completed", "failed") for v in videos) else None

