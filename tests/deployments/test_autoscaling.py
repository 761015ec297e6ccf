"""Queue-driven autoscaling of the generator on a real cluster: a burst of jobs starts a second replica that serves
jobs, and the deployment shrinks back after the burst. No custom policy: every accepted job is a handle call Serve
counts (see deployments/autoscaling.py), with `target_ongoing_requests=1` from the video defaults.

Run: ../shared/bin/loopback-only .venv/bin/python -m pytest tests/deployments/test_autoscaling.py
"""

from __future__ import annotations


import pytest

from tests.cluster.live import ApiClient, app_fixture, replicas_running, replicas_that_completed_jobs, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "pab-autoscale"
BURST = 6
BURST_STEPS = 30  # each job keeps a replica busy for seconds
MAX_JOBS = 30  # bound on the top-ups below


app = app_fixture(
    APP,
    "/autoscale",
    # Short delays for the test; the video defaults fill in target_ongoing_requests=1.
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 4,
        "look_back_period_s": 2,
        # Ray 2.60 pushes handle/replica load on this period (the RAY_SERVE_*_PUSH_INTERVAL_S env vars are not
        # read); it must be below look_back_period_s or queued requests age out of the window unseen.
        "metrics_interval_s": 0.5,
    },
)


def test_a_burst_starts_a_second_replica_that_serves_and_then_scales_down(app: ApiClient) -> None:
    wait_for(lambda: replicas_running(APP) == 1, 60, "one generator replica before the burst")
    ids = [app.create(prompt=f"burst {i}", seed=i, steps=BURST_STEPS)["id"] for i in range(BURST)]

    def top_up() -> None:
        # Keep two jobs waiting (bounded by MAX_JOBS): a new replica takes a while to load its workers on a busy
        # machine, and the jobs dispatched before it came up stay in the first replica's engine queue, so only
        # jobs sent after it is up can reach it.
        if len(ids) < MAX_JOBS and sum(app.get(i)["status"] == "queued" for i in ids) < 2:
            ids.append(app.create(prompt=f"top-up {len(ids)}", seed=len(ids), steps=BURST_STEPS)["id"])

    def second_replica_running() -> bool:
        top_up()
        return replicas_running(APP) == 2

    def both_replicas_completed_jobs() -> bool:
        # The per-replica job counters they export (Serve tags each replica); top up until the new one has served.
        if len(replicas_that_completed_jobs(APP)) == 2:
            return True
        top_up()
        return False

    wait_for(second_replica_running, 240, "Serve to start a second generator replica for the queue", 1.0)
    wait_for(both_replicas_completed_jobs, 240, "jobs counted on both generator replicas", 1.0)
    videos = [app.wait(i, timeout=240) for i in ids]
    assert [v["status"] for v in videos] == ["completed"] * len(ids), [v["error"] for v in videos]
    assert len(replicas_that_completed_jobs(APP)) == 2

    wait_for(lambda: replicas_running(APP) == 1, 120, "the deployment to scale back to min_replicas=1")
