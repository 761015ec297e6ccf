"""Back-pressure on a real cluster: past `queue.max_jobs` jobs in flight, `POST /v1/videos` answers 429 with
`Retry-After` and an OpenAI-shaped error, creates no job, and every accepted job still completes.

Run: ../shared/bin/loopback-only .venv/bin/python -m pytest tests/deployments/test_backpressure.py
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cluster.live import ApiClient, app_fixture, scrape, series, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "pab-backpressure"
MAX_JOBS = 3
RETRY_AFTER_S = 2
BURST = 8
STEPS = 40  # a job runs for seconds: the whole burst lands while the first jobs still run


app = app_fixture(
    APP,
    "/backpressure",
    num_replicas=1,
    queue={"max_jobs": MAX_JOBS, "retry_after_s": RETRY_AFTER_S},
)


def _post(app: ApiClient, i: int):
    return app.http.post("/v1/videos", json={"prompt": f"burst {i}", "seed": i, "steps": STEPS})


def test_a_burst_beyond_the_queue_limit_gets_429_and_no_accepted_job_is_lost(app: ApiClient) -> None:
    with ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(lambda i: _post(app, i), range(BURST)))
    accepted = [r.json()["id"] for r in responses if r.status_code in (200, 201)]
    rejected = [r for r in responses if r.status_code == 429]
    assert len(accepted) + len(rejected) == BURST, [r.status_code for r in responses]
    assert len(accepted) == MAX_JOBS, "exactly max_jobs jobs fit while none has finished"

    for r in rejected:
        assert r.headers["retry-after"] == str(RETRY_AFTER_S)
        error = r.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert f"queue.max_jobs={MAX_JOBS}" in error["message"] and "retry after" in error["message"]

    # The official SDK sees a RateLimitError while the queue is still full.
    import openai

    client = openai.OpenAI(base_url=str(app.http.base_url).rstrip("/") + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.videos.create(prompt="one too many", extra_body={"steps": STEPS})
    assert info.value.response.headers["retry-after"] == str(RETRY_AFTER_S)

    # Every accepted job completes; the store holds exactly those (a 429 created nothing).
    videos = [app.wait(i, timeout=240) for i in accepted]
    assert [v["status"] for v in videos] == ["completed"] * MAX_JOBS, [v["error"] for v in videos]
    listed = {v["id"] for v in app.http.get("/v1/videos", params={"limit": 100}).json()["data"]}
    assert listed == set(accepted)

    # With the queue drained, the server accepts again.
    again = _post(app, 99)
    assert again.status_code == 200, again.text
    assert app.wait(again.json()["id"], timeout=240)["status"] == "completed"

    # The refusals were counted (the SDK's one included).
    def rejections() -> float:
        return sum(v for _, v in series(scrape(), "ray_pab_jobs_rejected_total", application=APP))

    wait_for(
        lambda: rejections() == len(rejected) + 1,
        30,
        "ray_pab_jobs_rejected_total to count the 429s",
    )
