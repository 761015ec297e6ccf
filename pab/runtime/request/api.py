"""The one place that maps the Videos API's field names onto `GenerationRequest`'s, in both directions.

The API speaks OpenAI's names (`size` "WIDTHxHEIGHT", `seconds`) and short ones of ours (`frames`, `steps`); the
runtime speaks diffusers' (`num_frames`, `height`/`width`, `num_inference_steps`). Errors name the field the client
sent; the Video object reports the resolved request under the API's names.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

API_NAMES: dict[str, str] = {"num_frames": "frames", "height": "size", "width": "size", "num_inference_steps": "steps",
                             "remix": "video_id"}
"""Internal field -> the API field that carries it (fields absent here have the same name on both sides)."""

API_ALIASES: dict[str, tuple[str, ...]] = {
    "frames": ("frames", "num_frames"),
    "steps": ("steps", "num_inference_steps"),
    "guidance_scale": ("guidance_scale", "guidance"),
}
"""The names the create body accepts for a field (the short name first)."""

_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*$")


def api_name(field: str | None, *, frames_from_seconds: bool = False) -> str | None:
    """The API field a client used for the internal `field` (`seconds` when it sent seconds instead of frames)."""
    if field == "num_frames" and frames_from_seconds:
        return "seconds"
    return API_NAMES.get(field, field) if field is not None else None


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (OpenAI order) -> (width, height)."""
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"size must look like 'WIDTHxHEIGHT' (e.g. '32x32'), got {size[:40]!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise ValueError(f"size must be at least 1x1, got {size!r}")
    return width, height


def format_size(width: int, height: int) -> str:
    return f"{width}x{height}"


def request_fields(body: Mapping[str, Any], frames_for_seconds: Any) -> dict[str, Any]:
    """The `GenerationRequest` fields of an API create body (API names -> internal names).

    `frames_for_seconds(seconds, fps)` turns a duration into the model's nearest valid frame count. Raises
    `ValueError` for an unreadable `size`.
    """
    fields = {k: body[k] for k in ("prompt", "negative_prompt", "model", "guidance_scale", "seed", "fps", "pab")
              if body.get(k) is not None}
    if body.get("size") is not None:
        fields["width"], fields["height"] = parse_size(body["size"])
    if body.get("frames") is not None:
        fields["num_frames"] = body["frames"]
    elif body.get("seconds") is not None:
        fields["num_frames"] = frames_for_seconds(body["seconds"], body.get("fps"))
    if body.get("steps") is not None:
        fields["num_inference_steps"] = body["steps"]
    return fields


def video_fields(request: Any) -> dict[str, Any]:
    """A resolved `GenerationRequest` under the API's names (the Video object's request fields)."""
    return {
        "model": request.model,
        "prompt": request.prompt,
        "size": format_size(request.width, request.height),
        "frames": request.num_frames,
        "fps": request.fps,
        "seed": request.seed,
        "steps": request.num_inference_steps,
        "pab": request.pab,
        "input_reference_sha256": request.input_reference.sha256 if request.input_reference is not None else None,
        "remixed_from_video_id": request.remix.video_id if request.remix is not None else None,
    }
