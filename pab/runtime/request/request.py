"""`GenerationRequest`: one text-to-video request with internal field names, as Python callers, the job store and the
workers see it. Fields left None take the model's defaults; `resolve` fills every one of them.

The HTTP API names some fields differently (`frames`, `steps`, `size`, `seconds`); `pab.runtime.request.api` is the
one place that maps them.
"""

from __future__ import annotations

import json
from typing import Any, Hashable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pab.runtime.request.conditioning import ReferenceImage, SourceVideo
from pab.runtime.request.params import MAX_SEED, GenerationParams

PAB_FIELD_DOC = (
    "PAB for this request: a preset name (e.g. 'PAB-246', 'none', 'reference'), or an object of overrides on top of "
    "a preset: {'preset': 'PAB-357', 'spatial': {'range': 3}, 'mlp': null}; kinds: spatial, temporal, cross, mlp."
)

GENERATION_FIELDS: tuple[str, ...] = (
    "num_frames", "height", "width", "num_inference_steps", "guidance_scale", "seed", "fps",
)
"""The fields `resolve` fills from the model's defaults (and a drawn seed) when a request leaves them None."""


class GenerationRequest(BaseModel):
    """One text-to-video generation (field names as in `GenerationParams`, plus the served `model` and `pab`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    model: str | None = Field(None, description="must be the served model's name when given")
    num_frames: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    fps: int | None = Field(None, ge=1, le=120)
    pab: str | dict[str, Any] | None = Field(None, description=PAB_FIELD_DOC)
    input_reference: ReferenceImage | None = Field(
        None, description="image-to-video: the image the video starts from, fitted to width x height at the edge")
    remix: SourceVideo | None = Field(
        None, description="video-to-video: the finished video this one edits (its exact frames) and the strength")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty or only whitespace")
        return value

    @property
    def resolved(self) -> bool:
        """Whether `resolve` filled every field (a resolved request replays identically, seed included)."""
        return self.model is not None and all(getattr(self, f) is not None for f in GENERATION_FIELDS)

    @property
    def preset_name(self) -> str:
        """The name of the PAB setting it runs with (`none` when unhooked), as metrics label it."""
        return (self.pab or {}).get("name", "none")

    def params(self) -> GenerationParams:
        """The generation parameters (`GenerationParams` re-checks their bounds: an assertion-level check)."""
        return GenerationParams(**self.model_dump(exclude={"model", "pab", "input_reference", "remix"}))


def batch_key(request: GenerationRequest, *, per_sample_guidance: bool = False) -> Hashable:
    """Requests with equal keys can share one denoising loop: same model, size, frames, steps, PAB schedule and
    guidance mode (CFG off, on, or below 1), and conditioning (a reference image, a remix at one strength, or
    neither). Prompts, negative prompts, seeds, reference images and remix sources may differ, and so may guidance scales when the pipeline takes one per sample
    (`ModelCard.per_sample_guidance`)."""
    g = request.guidance_scale
    mode = (g > 1.0, g == 1.0)
    return (
        request.model, request.width, request.height, request.num_frames, request.num_inference_steps,
        json.dumps(request.pab, sort_keys=True), mode if per_sample_guidance else (mode, g),
        request.input_reference is not None, request.remix.strength if request.remix is not None else None,
    )
