"""Bad input through the live HTTP app: every one a 4xx in the OpenAI error shape naming the field, before a job
exists (issue: overflow, NaN/Infinity, deep nesting, booleans for numbers, sizes the split refuses, content types),
the SDK's multipart PAB overrides, no exception text in a 500, and tenants that see only their own jobs."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from tests.conftest import ALICE_KEY, TEST_API_KEY

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _ids(http) -> set[str]:
    return {v["id"] for v in http.get("/v1/videos", params={"limit": 100}).json()["data"]}


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "a cat", "seconds": 1e308}, "seconds"),
    ({"prompt": "a cat", "seconds": -1}, "seconds"),
    ({"prompt": "a cat", "steps": True}, "steps"),
    ({"prompt": "a cat", "seed": 2**64}, "seed"),
    ({"prompt": "a cat", "frames": 1}, "frames"),  # 1 latent frame cannot split over sp_degree 2
    ({"prompt": "a cat", "size": "9" * 40}, "size"),
    ({"prompt": "a cat", "pab": {"preset": "PAB-246", "name": "x" * 5000}}, "pab"),
    ({"prompt": "a cat", "pab": {"spatial": 5}}, "pab"),
    ({"prompt": "a cat", "pab": [1, 2]}, "pab"),
])
def test_bad_json_fields_are_400_naming_the_field_and_create_no_job(pab_app, body, param):
    http = pab_app.client().http
    before = _ids(http)
    error = _error(http.post("/v1/videos", json=body), 400)
    assert error["param"] == param, error
    assert _ids(http) == before


def test_non_finite_numbers_and_deep_nesting_are_400(pab_app):
    http = pab_app.client().http
    headers = {"content-type": "application/json"}
    for raw in (b'{"prompt": "a cat", "seconds": Infinity}', b'{"prompt": "a cat", "guidance_scale": NaN}'):
        assert _error(http.post("/v1/videos", content=raw, headers=headers), 400)["code"] == "invalid_json"
    deep = b'{"prompt": "a cat", "pab": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    assert "nested too deeply" in _error(http.post("/v1/videos", content=deep, headers=headers), 400)["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_bodies_that_are_not_json_or_multipart_are_415(pab_app, content_type):
    http = pab_app.client().http
    before = _ids(http)
    headers = {"content-type": content_type} if content_type else {}
    response = http.post("/v1/videos", content=json.dumps({"prompt": "a cat"}).encode(), headers=headers)
    assert _error(response, 415)["code"] == "unsupported_media_type"
    assert _ids(http) == before


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_sdk_sends_pab_overrides_and_bad_seconds_as_multipart(pab_app):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{pab_app.url}/v1", api_key=TEST_API_KEY, max_retries=0)
    video = client.videos.create(prompt="a cat runs", extra_body={
        "steps": 2, "pab": {"preset": "PAB-357", "spatial": {"range": 3, "window": [100, 900]}}})
    assert video.pab["name"] == "PAB-357+custom"
    assert (video.pab["spatial"]["range"], video.pab["spatial"]["window"]) == (3, [100.0, 900.0])
    assert video.pab["temporal"]["range"] == 5  # the rest from the preset
    with pytest.raises(BadRequestError) as info:
        client.videos.create(prompt="a cat runs", seconds="1e308")
    assert info.value.body["param"] == "seconds"


def test_a_500_answers_with_a_request_id_and_never_the_exception_text(caplog):
    from deployments.ingress import _unexpected_error, logger

    logger.addHandler(caplog.handler)  # Ray's serve logger need not propagate to the root logger
    request = SimpleNamespace(method="GET", url=SimpleNamespace(path="/v1/videos"))
    try:
        response = asyncio.run(_unexpected_error(request, RuntimeError("secret /etc/internal/path")))
    finally:
        logger.removeHandler(caplog.handler)

    body = json.loads(response.body)["error"]
    assert response.status_code == 500 and "secret" not in body["message"] and "RuntimeError" not in body["message"]
    request_id = body["message"].split("request id ")[1].split(")")[0]
    assert request_id in caplog.text and "secret /etc/internal/path" in caplog.text  # the log has both


def test_a_tenant_sees_lists_downloads_and_deletes_only_its_own_jobs(shapes_app):
    alice, other = shapes_app.client(api_key=ALICE_KEY), shapes_app.client(api_key=TEST_API_KEY)
    mine = alice.wait(alice.create(prompt="a red square moving left", steps=2, seed=1)["id"])
    theirs = other.wait(other.create(prompt="a blue disc moving up", steps=2, seed=2)["id"])
    assert mine["status"] == theirs["status"] == "completed"
    assert mine["id"] in _ids(alice.http) and theirs["id"] not in _ids(alice.http)
    assert theirs["id"] in _ids(other.http) and mine["id"] not in _ids(other.http)
    for path in (f"/v1/videos/{mine['id']}", f"/v1/videos/{mine['id']}/content"):
        assert _error(other.http.get(path), 404)["code"] == "not_found"
    assert _error(other.http.delete(f"/v1/videos/{mine['id']}"), 404)["code"] == "not_found"
    assert alice.http.get(f"/v1/videos/{mine['id']}/content").status_code == 200
    assert alice.http.delete(f"/v1/videos/{mine['id']}").status_code == 200


def test_a_tenants_queue_limit_is_a_429_naming_it(shapes_app):
    alice = shapes_app.client(api_key=ALICE_KEY)
    held = [alice.create(prompt="a green triangle moving down", size="32x32", steps=150, seed=i)["id"] for i in range(2)]
    error = _error(alice.http.post("/v1/videos", json={"prompt": "a red disc moving up", "steps": 2}), 429)
    assert "max_queued_jobs" in error["message"]
    other = shapes_app.client(api_key=TEST_API_KEY)  # another tenant is not held back by alice's limit
    assert other.wait(other.create(prompt="a red disc moving up", steps=2)["id"])["status"] == "completed"
    for job_id in held:
        alice.http.delete(f"/v1/videos/{job_id}")
