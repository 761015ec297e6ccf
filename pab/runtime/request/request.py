"""`GenerationRequest`: one text-to-video request with internal field names, as Python callers, the job store and the
workers see it. Fields left None take the model's defaults; `resolve` fills every one of them.

The HTTP API names some fields differently (`frames`, `steps`, `size`, `seconds`); `pab.runtime.request.api` is the
one place that maps them.
"""

from __future__ import annotations

import json
from typing import Any, Hashable, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pab.runtime.request.conditioning import (
    LosslessPixels, PixelsInfo, ReferenceImage, ReferenceImageInfo, SourceVideo, SourceVideoInfo,
)
from pab.runtime.request.params import MAX_SEED, GenerationParams

PAB_FIELD_DOC = (
    "PAB for this request: a preset name (e.g. 'PAB-246', 'none', 'reference'), or an object of overrides on top of "
    "a preset: {'preset': 'PAB-357', 'spatial': {'range': 3}, 'mlp': null}; kinds: spatial, temporal, cross, mlp."
)

GENERATION_FIELDS: tuple[str, ...] = (
    "num_frames", "height", "width", "num_inference_steps", "guidance_scale", "seed", "fps",
)
"""The fields `resolve` fills from the model's defaults (and a drawn seed) when a request leaves them None."""

PIXEL_FIELDS: tuple[str, ...] = ("input_reference", "remix")
"""The fields that carry pixels (a `LosslessPixels`); a `StoredRequest` keeps only their metadata."""
_REFERENCE_DOC = "image-to-video: the image the video starts from, fitted to width x height at the edge"
_REMIX_DOC = "video-to-video: the finished video this one edits (its exact frames) and the strength"


class _RequestFields(BaseModel):
    """What every form of a request shares: everything but the pixels."""

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
        return GenerationParams(**self.model_dump(exclude={"model", "pab", *PIXEL_FIELDS}))


class GenerationRequest(_RequestFields):
    """One text-to-video generation (field names as in `GenerationParams`, plus the served `model` and `pab`), with
    the pixels it is conditioned on, if any: what the pipeline runs."""

    input_reference: ReferenceImage | None = Field(None, description=_REFERENCE_DOC)
    remix: SourceVideo | None = Field(None, description=_REMIX_DOC)

    def detach(self) -> tuple["StoredRequest", dict[str, bytes]]:
        """The request as a job record keeps it (each payload's metadata only) and the PNG of each payload by field
        name: the store writes those as files of their own, so a record stays small however large the pixels."""
        pixels: dict[str, LosslessPixels] = {f: getattr(self, f) for f in PIXEL_FIELDS if getattr(self, f) is not None}
        stored = StoredRequest.model_validate(
            {**self.model_dump(exclude=set(PIXEL_FIELDS)), **{f: p.detach() for f, p in pixels.items()}})
        return stored, {f: p.png for f, p in pixels.items()}


class StoredRequest(_RequestFields):
    """A request as a job record keeps it: conditioning pixels as metadata (`PixelsInfo`: size, digest, source id,
    strength) whose PNG is a file of its own, so reading a record never reads pixels. `attach` makes the
    `GenerationRequest` that runs. Records written before the pixels moved out carry them inline (the
    `LosslessPixels` arm of each union); those attach as they are."""

    input_reference: ReferenceImageInfo | ReferenceImage | None = Field(None, description=_REFERENCE_DOC)
    remix: SourceVideoInfo | SourceVideo | None = Field(None, description=_REMIX_DOC)

    def detached(self) -> dict[str, PixelsInfo]:
        """The payloads whose PNG is not in the record, by field name (what `attach` needs)."""
        found = {f: getattr(self, f) for f in PIXEL_FIELDS}
        return {f: v for f, v in found.items() if v is not None and not isinstance(v, LosslessPixels)}

    def attach(self, pixels: Mapping[str, LosslessPixels]) -> GenerationRequest:
        """The runnable request: `pixels` (from `PixelsInfo.attach`, digest checked) in place of each detached
        payload. A KeyError names a detached field `pixels` lacks, so no request without its pixels runs."""
        missing = sorted(set(self.detached()) - set(pixels))
        if missing:
            raise KeyError(f"no pixels given for {', '.join(missing)}")
        inline = {f: getattr(self, f) for f in PIXEL_FIELDS if f not in pixels}
        return GenerationRequest.model_validate(
            {**self.model_dump(exclude=set(PIXEL_FIELDS)), **inline, **dict(pixels)})


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
