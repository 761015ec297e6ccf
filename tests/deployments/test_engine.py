"""The generation engine on a real app serving the default model (tiny-shapes; one replica, 2 CPU workers,
`engine.max_batch_size=3`; tests/conftest.py `shapes_app`): batches that leave every video byte-identical, batch
counts, DELETE of a running job, and jobs that outlive a killed worker or a killed generator replica. A long
"blocker" job of another size holds the replica while a test queues its jobs, so batches form the same way however
fast the machine is.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import RAY_METRICS_PORT, SHAPES_APP

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BLOCKER = {"prompt": "a green disc moving up", "size": "32x32", "steps": 60, "seed": 1}
"""Another size than the default 16x16: it never shares a batch with the tests' jobs."""


def _handle():
    from ray import serve

    from deployments.generator import DEPLOYMENT_NAME

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=SHAPES_APP)


def _engine_counts() -> dict:
    return _handle().describe.remote().result()["engine"]


def _create_all(api, bodies: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: api.create(**body), bodies))


def _block(api) -> dict:
    """Start the blocker and wait until it runs: jobs created now queue in the engine behind it."""
    blocker = api.create(**BLOCKER)
    api.wait(blocker["id"], until=lambda v: v["status"] == "in_progress")
    return blocker


def test_a_video_is_byte_identical_alone_and_in_a_batch_of_three(shapes_app):
    api = shapes_app.client()
    body = {"prompt": "a red square moving left", "steps": 6, "seed": 21}
    alone = api.wait(api.create(**body)["id"])
    assert alone["status"] == "completed" and alone["stats"] is not None

    blocker = _block(api)
    jobs = _create_all(api, [body, {**body, "prompt": "a blue disc moving up", "seed": 22, "guidance_scale": 4.0},
                             {**body, "prompt": "a yellow triangle moving right", "seed": 23}])
    done = [api.wait(j["id"]) for j in jobs]
    assert [d["status"] for d in done] == ["completed"] * 3
    assert api.wait(blocker["id"])["status"] == "completed"
    batched = shapes_app.store.state(jobs[0]["id"]).stats
    assert batched.batch_size == 3 and shapes_app.store.state(alone["id"]).stats.batch_size == 1
    assert api.content(jobs[0]["id"]) == api.content(alone["id"])  # same seed, same bytes, alone or batched
    assert done[0]["stats"]["kinds"] == alone["stats"]["kinds"]  # one PAB schedule for the whole batch
    assert api.content(jobs[1]["id"]) != api.content(jobs[0]["id"])


def test_six_jobs_run_as_two_batches_and_incompatible_jobs_never_share_one(shapes_app):
    api = shapes_app.client()
    before = _engine_counts()["batches_run"]
    blocker = _block(api)
    jobs = _create_all(api, [{"prompt": f"a {colour} disc moving {way}", "steps": 4, "seed": i}
                             for i, (colour, way) in enumerate([("red", "up"), ("green", "down"), ("blue", "left"),
                                                                 ("yellow", "right"), ("red", "left"), ("blue", "up")])])
    assert [api.wait(j["id"])["status"] for j in jobs] == ["completed"] * 6
    assert api.wait(blocker["id"])["status"] == "completed"
    sizes = [shapes_app.store.state(j["id"]).stats.batch_size for j in jobs]
    assert sizes == [3] * 6  # 6 jobs / 3 per batch = 2 batches
    assert shapes_app.store.state(blocker["id"]).stats.batch_size == 1  # its size matched none of them
    assert _engine_counts()["batches_run"] - before == 3  # the blocker's and two of three


def _cancelled_jobs_metric() -> float:
    from cluster.monitoring import scrape, series

    samples = scrape(f"http://127.0.0.1:{RAY_METRICS_PORT}/metrics")
    return sum(v for _, v in series(samples, "ray_pab_jobs_total", status="cancelled"))


def test_delete_of_a_running_job_stops_its_batch_and_frees_the_replica(shapes_app):
    api = shapes_app.client()
    counts = _engine_counts()
    cancelled_before = _cancelled_jobs_metric()
    long = api.create(prompt="a red triangle moving down", steps=200, seed=2)
    api.wait(long["id"], until=lambda v: v["status"] == "in_progress" and v["progress"] > 0)
    following = api.create(prompt="a blue square moving up", size="32x32", steps=2, seed=3)  # queued behind it

    assert api.http.delete(f"/v1/videos/{long['id']}").status_code == 200
    assert api.wait(following["id"])["status"] == "completed"
    after = _engine_counts()
    assert after["batches_stopped"] - counts["batches_stopped"] == 1  # stopped at a step end, not run to its end
    assert after["jobs_cancelled"] - counts["jobs_cancelled"] == 1
    assert not (shapes_app.store_path / "videos" / long["id"]).exists()  # nothing of the deleted job came back
    assert api.http.get(f"/v1/videos/{long['id']}").status_code == 404
    shapes_app.wait_for(lambda: _cancelled_jobs_metric() > cancelled_before, 30, "the cancelled job in the metrics")


def _claims(shapes_app, job_id: str) -> list[str]:
    return sorted(p.name for p in (shapes_app.store_path / "videos" / job_id / "claims").iterdir())


def _jobs_of_a_batch(api) -> list[dict]:
    jobs = _create_all(api, [{"prompt": f"a {colour} square moving right", "steps": 200, "seed": i}
                             for i, colour in enumerate(["red", "green", "blue"])])
    for job in jobs:
        api.wait(job["id"], until=lambda v: v["status"] == "in_progress" and v["progress"] > 0)
    return jobs


def test_a_killed_worker_runs_every_job_of_its_batch_again_once(shapes_app):
    import ray

    from deployments.workers import WORKER_NAMESPACE

    api = shapes_app.client()
    jobs = _jobs_of_a_batch(api)
    victim = next(name for name in _handle().describe.remote().result()["worker_names"] if name.endswith(":rank1"))
    ray.kill(ray.get_actor(victim, namespace=WORKER_NAMESPACE), no_restart=True)
    for job in jobs:
        finished = api.wait(job["id"], timeout=240)
        assert finished["status"] == "completed", finished["error"]
        assert finished["attempt"] == 2 and _claims(shapes_app, job["id"]) == ["1", "2"]


def test_a_killed_generator_replica_runs_its_jobs_again_once(shapes_app):
    import ray

    api = shapes_app.client()
    jobs = _jobs_of_a_batch(api)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if f"{SHAPES_APP}#VideoGenerator#" in a["name"]]
    assert len(replicas) == 1
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    for job in jobs:
        finished = api.wait(job["id"], timeout=300)
        assert finished["status"] == "completed", finished["error"]
        assert finished["attempt"] == 2 and _claims(shapes_app, job["id"]) == ["1", "2"]
