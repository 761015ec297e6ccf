"""The OpenAPI description of the Videos API as it really answers: the create body (JSON and the multipart form the
openai SDK sends), the error shape with the status codes the server sends (never FastAPI's 422), binary content
types, and the bearer scheme. `describe(app)` installs it as the app's `/openapi.json`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from pab.runtime.video import MIME_TYPES

from .schemas import CONTENT_FORMATS, VideoCreateBody, VideoRemixBody

CONTENT_MEDIA_TYPES = [MIME_TYPES[fmt] for fmt in CONTENT_FORMATS.values()]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error: `{"error": {"message", "type", "param", "code"}}` (the openai SDK reads it)."""

    error: ErrorDetail


_MEANINGS = {
    400: "invalid request: the message names the field and the limit",
    401: "missing or wrong API key",
    404: "no such video (or another tenant's)",
    405: "method not allowed",
    409: "the video is not completed yet (or, for a remix, has no stored frames)",
    415: "the body is neither application/json nor multipart/form-data",
    429: "the job queue (or the tenant's share of it) is full; retry after Retry-After seconds",
    500: "a server bug: the message gives the request id under which it was logged",
    503: "the model is still loading",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: each status it can answer besides 200, with the error shape."""
    return {code: {"model": ErrorBody, "description": _MEANINGS[code]} for code in (*codes, 500)}


class Health(BaseModel):
    status: str


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "`ok`: a generator replica has published the model card"},
    503: {"model": Health, "description": "`starting`: no generator replica can serve yet"},
}

CONTENT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the video (mp4), its thumbnail (webp) or its spritesheet (jpeg), by `variant`",
        "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in CONTENT_MEDIA_TYPES},
    },
}


def _form_schema(json_schema: dict[str, Any]) -> dict[str, Any]:
    """The create body as the SDK's multipart form: every field a string part (numbers as text); `pab` a preset
    name or a JSON object as text (the SDK's bracket fields `pab[spatial][range]` are read too); `input_reference`
    a file part (or the bracket field `input_reference[image_url]`)."""
    props = {}
    for name, spec in json_schema["properties"].items():
        props[name] = {"type": "string", "description": spec.get("description", name)}
        if name == "input_reference":
            props[name]["format"] = "binary"
    return {"type": "object", "properties": props, "required": json_schema.get("required", []),
            "additionalProperties": False}


def describe(app: FastAPI) -> None:
    """Make `app.openapi()` describe the API as it answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        body = VideoCreateBody.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=False)
        schemas.update(body.pop("$defs", {}))
        schemas["VideoCreateBody"] = body
        remix = VideoRemixBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas["VideoRemixBody"] = remix
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                operation.get("responses", {}).pop("422", None)
                if path == "/health":
                    operation["security"] = []
                if path == "/v1/videos" and method == "post":
                    operation["requestBody"] = {"required": True, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreateBody"}},
                        "multipart/form-data": {"schema": _form_schema(body)},
                    }}
                if path == "/v1/videos/{video_id}/remix" and method == "post":
                    operation["requestBody"] = {"required": True, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/VideoRemixBody"}},
                        "multipart/form-data": {"schema": _form_schema(remix)},
                    }}
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                            "description": "Authorization: Bearer <API key>"}}
        spec["security"] = [{"bearer": []}]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
