"""Image-to-video and remix through the served app (tiny-shapes; tests/conftest.py `shapes_app`): the real openai SDK
round trips (`client.videos.create(input_reference=open(...))`, `client.videos.remix(...)`), bad references refused
with a 400 naming `input_reference` before a job exists, remix rules (completed sources only, tenancy, strength), and
an image-to-video job re-run after a killed worker reproducing the same bytes."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pab.runtime.request.conditioning import decode_frames
from pab.runtime.tinyvideo.objective import objective_check
from serve_app.config import ReferenceConfig
from serve_app.references import reference_image
from serve_app.store import new_job_id
from tests.conftest import ALICE_KEY, TEST_API_KEY

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _sdk(app, api_key: str = TEST_API_KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{app.url}/v1", api_key=api_key, max_retries=0)


def _square_png(path, colour=(255, 0, 0), size=64) -> bytes:
    """A picture of a shape: a square a third of the image wide, left of centre, on black (the fit scales it to 16)."""
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[size // 3: size // 3 + size // 3, size // 4: size // 4 + size // 3] = colour
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _frames(app, video_id: str, num_frames: int) -> np.ndarray:
    return decode_frames((app.store_path / "videos" / video_id / "frames.png").read_bytes(), num_frames)


def _ids(api) -> set[str]:
    return {v["id"] for v in api.http.get("/v1/videos", params={"limit": 100}).json()["data"]}


def _wait(app, video_id: str, **kw) -> dict:
    return app.client().wait(video_id, **kw)


def test_sdk_image_to_video_round_trip_and_the_same_image_as_a_data_url(shapes_app, tmp_path):
    client = _sdk(shapes_app)
    data = _square_png(tmp_path / "ref.png")
    with open(tmp_path / "ref.png", "rb") as ref:
        video = client.videos.create(prompt="a red square moving right", input_reference=ref, size="16x16",
                                     extra_body={"seed": 11, "steps": 10})
    fitted = reference_image(data, 16, 16, ReferenceConfig())
    assert video.model_extra["input_reference_sha256"] == fitted.sha256
    assert "png" not in json.dumps(video.model_dump())  # the Video says it was conditioned, never the pixels
    done = _wait(shapes_app, video.id)
    assert done["status"] == "completed", done["error"]
    frames = _frames(shapes_app, video.id, done["frames"])
    np.testing.assert_array_equal(frames[0], fitted.rgb())  # the first frame is the fitted reference
    assert objective_check(frames, ("red", "square", "right")).ok
    assert client.videos.download_content(video.id).read()[4:8] == b"ftyp"

    url = "data:image/png;base64," + base64.b64encode(data).decode()
    again = shapes_app.client().create(prompt="a red square moving right", input_reference={"image_url": url},
                                       size="16x16", seed=11, steps=10)
    assert _wait(shapes_app, again["id"])["status"] == "completed"
    assert shapes_app.client().content(again["id"]) == shapes_app.client().content(video.id)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(("name", "words"), [
    ("text", "not a PNG, JPEG or WebP"),
    ("50mb", "references.max_bytes"),
    ("header", "references.max_pixels"),
    ("remote", "allowed_url_hosts"),
])
def test_bad_references_are_400_naming_input_reference_and_create_no_job(shapes_app, tmp_path, name, words):
    from openai import BadRequestError

    api = shapes_app.client()
    before = _ids(api)
    if name == "remote":  # the SDK's create uploads files only; an object goes as bracket fields via extra_body
        remote = {"input_reference": {"image_url": "https://images.example.com/cat.png"}}
        as_json = api.http.post("/v1/videos", json={"prompt": "a red square moving left", **remote})
        assert as_json.status_code == 400 and as_json.json()["error"]["param"] == "input_reference"
        call = {"extra_body": remote}
    else:
        path = tmp_path / f"{name}.png"
        path.write_bytes({"text": b"hello, not an image", "50mb": b"\x89PNG\r\n\x1a\n" + b"\0" * (50 * 2**20),
                          "header": _png_header(30000, 30000)}[name])
        call = {"input_reference": open(path, "rb")}
    with pytest.raises(BadRequestError) as info:
        _sdk(shapes_app).videos.create(prompt="a red square moving left", **call)
    assert info.value.status_code == 400 and info.value.body["param"] == "input_reference"
    assert words in info.value.body["message"]
    assert _ids(api) == before


def test_sdk_remix_keeps_the_motion_and_changes_the_colour(shapes_app):
    client = _sdk(shapes_app)
    source = client.videos.create(prompt="a red square moving left", size="16x16", extra_body={"seed": 5, "steps": 25})
    done = _wait(shapes_app, source.id)
    assert done["status"] == "completed"
    remix = client.videos.remix(source.id, prompt="a blue square moving left")
    assert remix.remixed_from_video_id == source.id and remix.prompt == "a blue square moving left"
    got = remix.model_dump()
    assert {k: got[k] for k in ("size", "frames", "steps", "seed", "fps")} == {
        k: done[k] for k in ("size", "frames", "steps", "seed", "fps")}
    finished = _wait(shapes_app, remix.id)
    assert finished["status"] == "completed" and finished["remixed_from_video_id"] == source.id
    out = _frames(shapes_app, remix.id, finished["frames"])
    assert objective_check(out, ("blue", "square", "left")).ok
    # the default strength (0.8) re-runs 20 of 25 steps
    assert len(shapes_app.store.state(remix.id).stats.step_s) == 20
    listed = client.videos.retrieve(remix.id)
    assert listed.remixed_from_video_id == source.id


def test_a_remix_runs_from_its_own_copy_of_the_source_frames_and_bad_pixel_files_fail_only_their_job(shapes_app):
    """The remix's folder holds the source's exact frames from its POST on (request.json only their digest), so it
    runs after the source is deleted; a pixel file that does not match fails that job with `store_corrupt` when it
    runs, and no GET or listing ever reads one (none answers 500)."""
    from tests.deployments.test_engine import _handle

    api, store = shapes_app.client(), shapes_app.store
    source = api.wait(api.create(prompt="a red square moving left", steps=10, seed=6)["id"])
    frames_png = (shapes_app.store_path / "videos" / source["id"] / "frames.png").read_bytes()
    remix = api.http.post(f"/v1/videos/{source['id']}/remix", json={"prompt": "a blue square moving left"}).json()
    assert api.http.delete(f"/v1/videos/{source['id']}").status_code == 200
    folder = shapes_app.store_path / "videos" / remix["id"]
    assert (folder / "remix_source.png").read_bytes() == frames_png
    assert len((folder / "request.json").read_bytes()) < 4096 and b'"png"' not in (folder / "request.json").read_bytes()
    done = api.wait(remix["id"])
    assert done["status"] == "completed" and done["remixed_from_video_id"] == source["id"], done["error"]
    assert store.runnable(store.record(remix["id"])).remix.png == frames_png  # what any re-run of it reads

    record = store.record(remix["id"])  # the same job again, its pixel file damaged: as an ingress that died left it
    clone = record.model_copy(update={"id": new_job_id()})
    store.create(clone, {"remix": b"not the frames"})
    for job_id in (remix["id"], clone.id):
        assert api.http.get(f"/v1/videos/{job_id}").status_code == 200
    assert {remix["id"], clone.id} <= _ids(api)
    assert _handle().run_job.remote(clone.id).result(timeout_s=120) == "failed"
    failed = api.http.get(f"/v1/videos/{clone.id}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "store_corrupt", failed
    assert "remix_source.png" in failed["error"]["message"]
    assert clone.id in {b.job_id for b in store.check()}
    assert api.wait(api.create(prompt="a red square moving left", steps=2, seed=7)["id"])["status"] == "completed"
    for job_id in (remix["id"], clone.id):
        assert api.http.delete(f"/v1/videos/{job_id}").status_code == 200


def test_remix_rules_unfinished_source_other_tenant_unknown_id_and_strength(shapes_app):
    api, alice = shapes_app.client(), shapes_app.client(api_key=ALICE_KEY)
    long = api.create(prompt="a green disc moving up", steps=200, seed=3)
    response = api.http.post(f"/v1/videos/{long['id']}/remix", json={"prompt": "a blue disc moving up"})
    assert response.status_code == 409 and response.json()["error"]["param"] == "video_id"
    mine = alice.wait(alice.create(prompt="a red disc moving up", steps=2, seed=1)["id"])
    before = _ids(api)
    assert api.http.post(f"/v1/videos/{mine['id']}/remix", json={"prompt": "a blue disc moving up"}).status_code == 404
    assert api.http.post("/v1/videos/video_00000000000000000000/remix", json={"prompt": "x"}).status_code == 404
    for body, param in (({"prompt": "a blue disc moving up", "strength": 0}, "strength"),
                        ({"prompt": "a blue disc moving up", "strength": 1.5}, "strength"),
                        ({"prompt": "a purple cat"}, "prompt"),
                        ({"prompt": "a blue disc moving up", "size": "32x32"}, "size")):
        response = alice.http.post(f"/v1/videos/{mine['id']}/remix", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert _ids(api) == before
    remix = alice.http.post(f"/v1/videos/{mine['id']}/remix", json={"prompt": "a blue disc moving up", "strength": 0.5})
    assert remix.status_code == 200 and alice.wait(remix.json()["id"])["status"] == "completed"
    assert api.http.delete(f"/v1/videos/{long['id']}").status_code == 200
    # alice's queue limit (max_queued_jobs 2) applies to remixes as to creates
    held = [alice.create(prompt="a red disc moving up", steps=200, seed=s) for s in (11, 12)]
    full = alice.http.post(f"/v1/videos/{mine['id']}/remix", json={"prompt": "a blue disc moving up"})
    assert full.status_code == 429 and "Retry-After" in full.headers, full.text
    for job in held:
        assert alice.http.delete(f"/v1/videos/{job['id']}").status_code == 200


def test_an_image_to_video_job_rerun_after_a_killed_worker_reproduces_the_same_bytes(shapes_app, tmp_path):
    import ray

    from deployments.workers import WORKER_NAMESPACE
    from tests.deployments.test_engine import _handle

    api = shapes_app.client()
    url = "data:image/png;base64," + base64.b64encode(_square_png(tmp_path / "ref.png", (0, 0, 255))).decode()
    body = {"prompt": "a blue square moving down", "input_reference": url, "steps": 200, "seed": 9}
    job = api.create(**body)
    api.wait(job["id"], until=lambda v: v["status"] == "in_progress" and v["progress"] > 0)
    victim = next(name for name in _handle().describe.remote().result()["worker_names"] if name.endswith(":rank1"))
    ray.kill(ray.get_actor(victim, namespace=WORKER_NAMESPACE), no_restart=True)
    rerun = api.wait(job["id"], timeout=240)
    assert rerun["status"] == "completed" and rerun["attempt"] == 2, rerun["error"]
    fresh = api.wait(api.create(**body)["id"], timeout=240)
    assert fresh["status"] == "completed" and fresh["attempt"] == 1
    assert api.content(job["id"]) == api.content(fresh["id"])
    np.testing.assert_array_equal(_frames(shapes_app, job["id"], 4), _frames(shapes_app, fresh["id"], 4))
