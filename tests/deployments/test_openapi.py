"""The served OpenAPI spec describes the API as it answers: request bodies (JSON and multipart), the real status
codes with the error shape, binary content types, the bearer scheme; and schemathesis (`--checks all`, a bounded
example count) finds no failure against the live app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_API_KEY

HERE = Path(__file__).resolve().parent


def _spec() -> dict:
    from deployments.ingress import app

    app.openapi_schema = None
    return app.openapi()


def test_the_create_body_is_described_as_json_and_as_the_sdks_multipart_form():
    body = _spec()["paths"]["/v1/videos"]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "multipart/form-data"}
    schema = _spec()["components"]["schemas"]["VideoCreateBody"]
    assert schema["required"] == ["prompt"] and schema["additionalProperties"] is False
    assert {"prompt", "size", "seconds", "frames", "steps", "seed", "pab"} <= set(schema["properties"])
    form = body["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == set(schema["properties"])


def test_input_reference_and_remix_are_described():
    spec = _spec()
    schemas = spec["components"]["schemas"]
    reference = schemas["VideoCreateBody"]["properties"]["input_reference"]
    assert [alt.get("type") for alt in reference["anyOf"]] == ["string", "object", "null"]
    assert reference["anyOf"][1]["required"] == ["image_url"] and "centre-cropped" in reference["description"]
    form = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["input_reference"]["format"] == "binary"  # the SDK's file part
    remix = spec["paths"]["/v1/videos/{video_id}/remix"]["post"]
    assert remix["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/VideoRemixBody")
    assert schemas["VideoRemixBody"]["required"] == ["prompt"]
    assert set(schemas["VideoRemixBody"]["properties"]) == {"prompt", "strength"}
    assert {"400", "404", "409", "429"} <= set(remix["responses"])
    video = schemas["Video"]["properties"]
    assert {"remixed_from_video_id", "input_reference_sha256"} <= set(video)


def test_statuses_are_the_ones_the_server_sends_with_the_error_shape():
    spec = _spec()
    seen = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "422" not in codes, f"{method} {path} documents FastAPI's 422, which the server never sends"
            seen |= codes
            for code in codes - {"200"} if path != "/health" else ():  # health answers {"status"} either way
                ref = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, code)
    assert {"400", "401", "404", "409", "415", "429", "503"} <= seen
    post = spec["paths"]["/v1/videos"]["post"]["responses"]
    assert {"400", "401", "415", "429", "503"} <= set(post)


def test_content_is_binary_and_the_bearer_scheme_guards_all_but_health():
    spec = _spec()
    content = spec["paths"]["/v1/videos/{video_id}/content"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"video/mp4", "image/webp", "image/jpeg"}
    assert all(c["schema"] == {"type": "string", "format": "binary"} for c in content.values())
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"}
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert set(spec["paths"]["/health"]["get"]["responses"]) == {"200", "503"}  # 503 `starting` until the card


@pytest.mark.ray
@pytest.mark.slow
def test_schemathesis_finds_no_failure_against_the_live_app(pab_app, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis), "--no-color", "--config-file", str(HERE / "schemathesis.toml"), "run", f"{pab_app.url}/openapi.json",
        "--checks", "all", "--max-examples", "30", "--seed", "7", "--phases", "examples,coverage,fuzzing",
        "--header", f"Authorization: Bearer {TEST_API_KEY}", "--request-timeout", "60",
        "--report-dir", str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
