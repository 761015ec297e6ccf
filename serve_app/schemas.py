"""Wire types: the typed Python API of the generator (`GenerationRequest` -> `GenerationResponse`) and the OpenAI
Videos API objects the HTTP ingress speaks (`VideoCreateBody` in; `Video`, `VideoList`, `VideoDeleted` out).

Python callers use the generator through a Serve handle::

    from ray import serve
    from serve_app.schemas import GenerationRequest

    handle = serve.get_deployment_handle("VideoGenerator", app_name="pab")
    result = await handle.generate.remote(GenerationRequest(prompt="a cat runs in the park", seed=7))
    open("cat.mp4", "wb").write(result.video)

Fields left `None` take the served model's defaults; the response carries the values actually used.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

PAB_FIELD_DOC = (
    "PAB for this request: a preset name (e.g. 'PAB-246', 'none', 'reference'), or an object of overrides on top of "
    "a preset: {'preset': 'PAB-357', 'spatial': {'range': 3}, 'mlp': null}; kinds: spatial, temporal, cross, mlp."
)


class GenerationRequest(BaseModel):
    """One text-to-video generation, as the generator deployment takes it (field names as in `pab.runtime.pipelines`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    model: str | None = Field(None, description="must be the served model's name when given")
    num_frames: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    fps: int | None = Field(None, ge=1, le=120)
    pab: str | dict[str, Any] | None = Field(None, description=PAB_FIELD_DOC)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty or only whitespace")
        return value

    def generation_kwargs(self) -> dict[str, Any]:
        """The fields `pab.runtime.pipelines.GenerationParams` takes."""
        return self.model_dump(exclude={"model", "pab"})


CONTENT_FORMATS: dict[str, str] = {"video": "mp4", "thumbnail": "webp", "spritesheet": "jpeg"}
"""File format of each content variant (`GET /v1/videos/{id}/content?variant=...`), as OpenAI serves them."""


class GenerationResponse(BaseModel):
    """A finished generation: the mp4, its thumbnail and spritesheet, the parameters used (seed included) and what
    PAB did."""

    model_config = ConfigDict(frozen=True)

    model: str
    video: bytes = Field(repr=False)
    thumbnail: bytes = Field(repr=False)
    spritesheet: bytes = Field(repr=False)
    request: GenerationRequest = Field(description="the request with every default resolved; replays identically")
    stats: dict[str, Any] = Field(description="pab.stats.PABStats.to_dict() of rank 0: hit rates, comm bytes")
    timings: dict[str, Any]

    def content(self, variant: str) -> bytes:
        return {"video": self.video, "thumbnail": self.thumbnail, "spritesheet": self.spritesheet}[variant]


# ---- OpenAI Videos API ---------------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (OpenAI order) -> (width, height)."""
    match = _SIZE.match(size)
    if not match:
        raise ValueError(f"size must look like 'WIDTHxHEIGHT' (e.g. '32x32'), got {size!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise ValueError(f"size must be at least 1x1, got {size!r}")
    return width, height


class VideoCreateBody(BaseModel):
    r"""
    The body of `POST /v1/videos`, as JSON or multipart form (the openai SDK sends form fields, i.e. strings; lax
    mode coerces them). Besides OpenAI's fields it takes the generation knobs, under short names or the diffusers
    names (`steps` / `num_inference_steps`, `frames` / `num_frames`, `guidance_scale` / `guidance`).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str
    model: str | None = None
    seconds: float | None = Field(None, gt=0)
    size: str | None = None
    input_reference: Any = None
    frames: int | None = Field(None, ge=1, validation_alias=AliasChoices("frames", "num_frames"))
    steps: int | None = Field(None, ge=1, validation_alias=AliasChoices("steps", "num_inference_steps"))
    guidance_scale: float | None = Field(None, ge=0, validation_alias=AliasChoices("guidance_scale", "guidance"))
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    negative_prompt: str = ""
    fps: int | None = Field(None, ge=1, le=120)
    pab: str | dict[str, Any] | None = Field(None, description=PAB_FIELD_DOC)


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """The OpenAI Video object, plus our extras (`frames`, `fps`, `seed`, `steps`, `stats`, `timings`)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    seconds: str
    size: str
    prompt: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    frames: int
    fps: int
    seed: int
    steps: int
    pab: dict[str, Any] | None = Field(None, description="the PAB config the job runs with")
    stats: dict[str, Any] | None = Field(None, description="PAB hit rates per kind and communication saved")
    timings: dict[str, Any] | None = None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    has_more: bool
    first_id: str | None
    last_id: str | None


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pab-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
