"""Families other than Latte served end to end on the session's Ray cluster (tests/conftest.py), one app at a time
beside the others under its own route: tiny LTX-Video text-to-video over HTTP on 2 workers (Ulysses through
diffusers' context parallel, PAB broadcasting and skipping its all-to-alls), and tiny LTX-Video image-to-video through
the Python handle with a `ReferenceImage` (its per-token timestep split with the tokens).

Run: scripts/loopback-only .venv/bin/python -m pytest tests/deployments/test_families_served.py
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from pab.runtime.video import decode_video
from tests.conftest import PabApp, _deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 8


@pytest.fixture
def family_app(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[callable]:
    """Deploys one family's app (sp_degree 2, the test key) under /<name>; deletes it after the test."""
    from ray import serve

    deployed: list[str] = []

    def deploy(model: str) -> PabApp:
        name = f"pab-{model}"
        deployed.append(name)
        return _deploy(name, f"/{name}", serve_http, str(tmp_path_factory.mktemp(name)), model=model)

    yield deploy
    for name in deployed:
        serve.delete(name)


def _handle(name: str):
    from ray import serve

    from deployments.generator import DEPLOYMENT_NAME

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)


def test_ltx_text_to_video_over_http_with_pab_and_sequence_parallel(family_app) -> None:
    app = family_app("tiny-ltx")
    api = app.client()
    created = api.create(prompt="a red car drives fast", model="tiny-ltx", size="32x32", frames=9, steps=STEPS, seed=3,
                         pab="PAB-246")
    final = api.wait(created["id"])
    assert final["status"] == "completed", final["error"]
    assert decode_video(api.content(created["id"])).shape == (9, 32, 32, 3)
    stats = final["stats"]
    assert stats["kinds"]["spatial"]["broadcast"] > 0 and stats["kinds"]["cross"]["broadcast"] > 0
    assert stats["comm"]["issued"]["spatial"]["all_to_all"]["calls"] > 0  # split over the replica's 2 workers
    assert stats["comm"]["skipped_bytes"] > 0  # broadcast attention sent nothing
    assert final["pab"]["name"] == "PAB-246"
    # a size LTXPipeline itself refuses (multiples of 32), and a reference image on a text-only family: 400s
    # naming the field, before a job exists
    for body, param in (({"size": "48x32"}, "size"), ({"frames": 10}, "frames")):
        response = api.http.post("/v1/videos", json={"prompt": "a red car", "model": "tiny-ltx", **body})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_ltx_image_to_video_through_the_handle(family_app) -> None:
    from pab.runtime.request.conditioning import ReferenceImage
    from serve_app.schemas import GenerationRequest, GenerationResponse

    family_app("tiny-ltx-i2v")
    handle = _handle("pab-tiny-ltx-i2v")
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[8:24, 4:20] = (255, 0, 0)  # a red square
    reference = ReferenceImage.from_rgb(rgb)
    request = GenerationRequest(prompt="a red car drives fast", seed=5, num_inference_steps=STEPS, pab="PAB-246",
                                input_reference=reference)
    result = handle.generate.remote(request).result()
    assert isinstance(result, GenerationResponse)
    assert result.request.input_reference == reference  # stored with the job: a re-run sees the same pixels
    video = decode_video(result.video)
    assert video.shape == (9, 32, 32, 3)
    assert result.stats.pab.kinds["spatial"].broadcast > 0 and result.stats.pab.comm.skipped_bytes > 0
    again = handle.generate.remote(result.request).result()
    assert again.video == result.video  # the resolved request, reference included, replays byte for byte
    with pytest.raises(ValueError, match="input_reference"):  # an image-to-video model needs its image
        handle.generate.remote(GenerationRequest(prompt="a red car", num_inference_steps=2)).result()
