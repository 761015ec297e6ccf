"""The Videos API end to end on a real local Ray cluster: placement groups, the worker group, HTTP, the openai SDK,
Python handles, and failures. One app (tests/conftest.py `pab_app`) serves every test; the tests that kill actors
run last in this module because they replace replicas.

Run: ../shared/bin/loopback-only .venv/bin/python -m pytest tests/deployments
"""

from __future__ import annotations

import numpy as np
import pytest

from pab.runtime.video import decode_video
from tests.conftest import PAB_INGRESS_ACTOR

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _generator_handle():
    from ray import serve

    from deployments.generator import DEPLOYMENT_NAME
    from serve_app.entrypoints.builder import APP_NAME

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)


def _workers() -> dict[str, object]:
    """Worker actors by name (`<replica>:rank<r>`), alive ones only."""
    import ray

    from deployments.workers import WORKER_NAMESPACE

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == WORKER_NAMESPACE]
    return {name: ray.get_actor(name, namespace=WORKER_NAMESPACE) for name in names}


def test_replica_placement_group_holds_both_workers(pab_app):
    import ray

    info = _generator_handle().describe.remote().result()
    pg_id = info["placement_group_id"]
    table = ray.util.placement_group_table()[pg_id]
    assert table["state"] == "CREATED"
    assert table["strategy"] == "STRICT_PACK"
    assert list(table["bundles"].values()) == [{"CPU": 0.5}, {"CPU": 0.5}]
    workers = info["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    for w in workers:
        assert w["placement_group_id"] == pg_id
        # Each worker holds a whole 0.5-CPU bundle, so two of them in this group fill one bundle each.
        assert w["assigned_resources"] == {"CPU": 0.5}
    assert len({w["node_id"] for w in workers}) == 1
    # Loaded CPU workers generate below the priority of their replica (and of any replica that is starting)
    assert {w["niceness"] for w in workers} == {min(19, info["niceness"] + pab_app.config.cpu_generation_niceness)}
    startup = info["startup"]  # each start phase was timed, and the phases add up to no more than the whole start
    assert set(startup) == {"worker_processes_s", "process_group_s", "load_s", "init_s"}
    assert sum(v for k, v in startup.items() if k != "init_s") <= startup["init_s"]


def test_http_create_poll_content(pab_app):
    api = pab_app.client()
    created = api.create(prompt="a red car drives on the road", size="32x32", frames=8, steps=40, seed=11)
    assert created["status"] == "queued" and created["progress"] == 0 and created["object"] == "video"
    assert (created["frames"], created["size"], created["seconds"], created["seed"]) == (8, "32x32", "1", 11)

    seen: list[int] = []
    final = api.wait(created["id"], until=lambda v: seen.append(v["progress"]) or v["status"] in ("completed", "failed"))
    assert final["status"] == "completed", final["error"]
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert seen[-1] == 100
    assert len({p for p in seen if 0 < p < 100}) >= 2, f"no per-step progress seen: {seen}"

    frames = decode_video(api.content(created["id"]))
    assert frames.shape == (8, 32, 32, 3)
    thumbnail = api.content(created["id"], "thumbnail")
    assert thumbnail[:4] == b"RIFF" and thumbnail[8:12] == b"WEBP"

    stats = final["stats"]
    assert stats["attention"]["broadcast"] > 0
    assert stats["comm"]["issued_calls"] > 0
    assert stats["comm"]["skipped_calls"] > 0 and stats["comm"]["skipped_bytes"] > 0
    assert set(final["timings"]) >= {"queue_wait_s", "denoise_s", "decode_s", "encode_s", "total_s"}
    assert final["pab"]["name"] == "reference:latte"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks OpenAI's own Sora endpoint as retired
def test_openai_sdk_drives_the_api(pab_app):
    from openai import AuthenticationError, NotFoundError, OpenAI

    key = pab_app.config.api_key.get_secret_value()
    client = OpenAI(base_url=f"{pab_app.url}/v1", api_key=key, max_retries=0)
    video = client.videos.create_and_poll(
        prompt="a dog runs on the beach", model="tiny-latte", seconds="1", size="32x32", extra_body={"seed": 5}
    )
    assert video.status == "completed" and video.progress == 100, video.error
    assert (video.size, video.seconds, video.model) == ("32x32", "1", "tiny-latte")
    assert video.stats["attention"]["broadcast"] > 0  # our extras reach SDK users as attributes
    assert client.videos.retrieve(video.id).status == "completed"

    frames = decode_video(client.videos.download_content(video.id).read())
    assert frames.shape == (8, 32, 32, 3)
    assert client.videos.download_content(video.id, variant="thumbnail").read()[8:12] == b"WEBP"

    second = client.videos.create(prompt="a bird flies over the lake", extra_body={"steps": 2})
    listed = [v.id for v in client.videos.list(limit=1, order="asc")]  # one per page: pages through `after`
    assert len(listed) == len(set(listed))
    assert listed.index(video.id) < listed.index(second.id)
    newest_first = client.videos.list(limit=2)
    assert newest_first.data[0].id == second.id and newest_first.has_more == (len(listed) > 2)

    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.deleted) == (video.id, True)
    with pytest.raises(NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{pab_app.url}/v1", api_key="wrong", max_retries=0).videos.list()
    assert client.models.list().data[0].id == "tiny-latte"


def test_deployment_handle_generate(pab_app):
    from serve_app.schemas import GenerationRequest, GenerationResponse

    handle = _generator_handle()
    result = handle.generate.remote(GenerationRequest(prompt="a fish swims in the river", seed=3, num_inference_steps=4)).result()
    assert isinstance(result, GenerationResponse)
    assert result.request.seed == 3 and result.request.num_frames == 8 and result.request.width == 32
    assert decode_video(result.video).shape == (8, 32, 32, 3)
    assert result.stats.pab.kinds["spatial"].calls > 0 and result.stats.batch_size == 1
    with pytest.raises(ValueError, match="num_frames"):
        handle.generate.remote(GenerationRequest(prompt="a cat", num_frames=5)).result()


def test_same_seed_same_bytes_and_seeds_differ(pab_app):
    api = pab_app.client()
    request = {"prompt": "a horse runs in the field", "steps": 4, "seed": 1234, "pab": "PAB-246"}
    ids = [api.create(**request)["id"], api.create(**request)["id"], api.create(**{**request, "seed": 99})["id"]]
    for video_id in ids:
        assert api.wait(video_id)["status"] == "completed"
    first, again, other = (api.content(i) for i in ids)
    assert first == again
    assert not np.array_equal(decode_video(first), decode_video(other))


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"prompt": "a cat", "model": "sora-2"}, 404, "model", "sora-2"),
        ({"prompt": "a cat", "size": "30x30"}, 400, "size", "multiple of 8"),
        ({"prompt": "a cat", "size": "big"}, 400, "size", "WIDTHxHEIGHT"),
        ({"prompt": "a cat", "frames": 64}, 400, "frames", "max_frames=16"),
        ({"prompt": "a cat", "steps": 1000}, 400, "steps", "max_steps=400"),
        ({"prompt": "a cat", "size": "64x64", "frames": 16, "steps": 400}, 400, None, "max_work"),
        ({"prompt": "a cat", "frames": 9}, 400, "frames", "must be 8"),
        ({"prompt": "   "}, 400, "prompt", "empty"),
        ({"size": "32x32"}, 400, "prompt", "required"),
        ({"prompt": "a cat", "pab": "PAB-999"}, 400, "pab", "unknown preset"),
        ({"prompt": "a cat", "pab": {"spatial": {"range": 0}}}, 400, "pab", "range"),
        ({"prompt": "a cat", "stpes": 4}, 400, "stpes", "Extra inputs"),
    ],
)
def test_bad_requests_get_openai_errors(pab_app, body, status, param, words):
    response = pab_app.client().http.post("/v1/videos", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"]


def test_malformed_bodies_and_unknown_ids(pab_app):
    http = pab_app.client().http
    bad_json = http.post("/v1/videos", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    for path in ("/v1/videos/video_0000000000000000000000000", "/v1/videos/nope/content", "/v1/videos/../x"):
        response = http.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "error" in response.json()
    assert http.delete("/v1/videos/video_0000000000000000000000000").status_code == 404
    assert pab_app.client(api_key=None).http.get("/v1/videos").status_code == 401
    assert pab_app.client(api_key=None).http.get("/health").status_code == 200


def test_shapes_the_split_or_the_pipeline_refuse_are_a_400_before_any_job_exists(pab_app):
    # 1 frame passes the model's own rules (Latte takes 8 or 1) but gives 1 latent frame, which DSP cannot split
    # over 2 ranks; 12x12 fits the latents (VAE 2 x patch 2) but LattePipeline itself takes multiples of 8 only.
    # The resolver checks both at POST (from the model card), so no job is ever accepted.
    api = pab_app.client()
    before = {v["id"] for v in api.http.get("/v1/videos", params={"limit": 100}).json()["data"]}
    for body, param, words in (({"frames": 1}, "frames", "sp_degree = 2"),
                               ({"size": "12x12"}, "size", "the pipeline takes multiples of 8")):
        response = api.http.post("/v1/videos", json={"prompt": "a cat", "steps": 2, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error
    assert {v["id"] for v in api.http.get("/v1/videos", params={"limit": 100}).json()["data"]} == before
    assert api.wait(api.create(prompt="a cat", steps=2)["id"])["status"] == "completed"


def test_multipart_form_like_the_sdk_sends(pab_app):
    http = pab_app.client().http
    fields = {"prompt": "a boat on the ocean", "seconds": "1", "size": "32x32", "steps": "2", "seed": "8",
              "pab": '{"preset": "PAB-357", "mlp": null}'}
    response = http.post("/v1/videos", files={k: (None, v) for k, v in fields.items()})
    assert response.status_code == 200, response.text
    video = response.json()
    assert (video["steps"], video["seed"], video["frames"]) == (2, 8, 8)
    assert video["pab"]["name"] == "PAB-357+custom" and video["pab"]["mlp"] is None
    assert video["pab"]["spatial"]["range"] == 3


def test_jobs_survive_an_ingress_restart(pab_app):
    import ray

    api = pab_app.client()
    done = api.create(prompt="a train crosses the bridge", steps=2, seed=4)
    assert api.wait(done["id"])["status"] == "completed"
    running = api.create(prompt="a plane flies over the city", steps=150, seed=5)
    api.wait(running["id"], until=lambda v: v["progress"] > 0)

    ingress = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(PAB_INGRESS_ACTOR)]
    assert len(ingress) == 1
    ray.kill(ray.get_actor(ingress[0]["name"], namespace=ingress[0]["namespace"]), no_restart=True)
    pab_app.wait_for(
        lambda: [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(PAB_INGRESS_ACTOR) and a["name"] != ingress[0]["name"]],
        timeout=120, what="a new ingress replica",
    )
    pab_app.wait_for(lambda: api.http.get("/health").status_code == 200, timeout=120, what="the ingress to answer")

    assert api.get(done["id"])["status"] == "completed"
    assert decode_video(api.content(done["id"])).shape == (8, 32, 32, 3)
    finished = api.wait(running["id"])
    assert finished["status"] == "completed", finished["error"]
    assert decode_video(api.content(running["id"])).shape == (8, 32, 32, 3)


def test_killed_worker_runs_the_job_again_and_the_replica_is_replaced(pab_app):
    import ray

    api = pab_app.client()
    handle = _generator_handle()
    before = handle.describe.remote().result()["placement_group_id"]
    job = api.create(prompt="a dragon flies in the sky", steps=400, seed=6)
    api.wait(job["id"], until=lambda v: v["status"] == "in_progress" and v["progress"] > 0)

    victim = next(name for name in handle.describe.remote().result()["worker_names"] if name.endswith(":rank1"))
    ray.kill(_workers()[victim], no_restart=True)

    finished = api.wait(job["id"], timeout=240)
    assert finished["status"] == "completed", finished["error"]
    assert finished["attempt"] == 2  # lost with its worker, run again on the replacement replica
    claims = sorted(p.name for p in (pab_app.store_path / "videos" / job["id"] / "claims").iterdir())
    assert claims == ["1", "2"]  # one claim per attempt: never two runners of one attempt
    assert decode_video(api.content(job["id"])).shape == (8, 32, 32, 3)

    after = api.wait(api.create(prompt="a small cat", steps=2, seed=7)["id"], timeout=240)
    assert after["status"] == "completed", after["error"]
    assert handle.describe.remote().result()["placement_group_id"] != before
    assert not any(name == victim for name in _workers())
