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

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from pab.runtime.request.api import API_ALIASES
from pab.runtime.request.request import PAB_FIELD_DOC, GenerationRequest
from pab.runtime.stats import GenerationStats

__all__ = ["GenerationRequest", "GenerationResponse", "VideoCreateBody", "VideoRemixBody", "ImageReference", "Video", "VideoList", "VideoDeleted", "Model",
           "ModelList", "CONTENT_FORMATS"]

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
    frames: bytes = Field(b"", repr=False, description="the exact uint8 frames as one PNG strip "
                          "(`conditioning.encode_frames`): what a remix of this video edits, never the lossy mp4")
    request: GenerationRequest = Field(description="the request with every default resolved; replays identically")
    stats: GenerationStats = Field(description="what PAB did (rank 0's counts), step times and stage timings")

    def content(self, variant: str) -> bytes:
        return {"video": self.video, "thumbnail": self.thumbnail, "spritesheet": self.spritesheet}[variant]


# ---- OpenAI Videos API ---------------------------------------------------------------------------------------------

def _no_bool(value: Any) -> Any:
    """JSON `true` is not a number: refuse it instead of reading it as 1."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]


class ImageReference(BaseModel):
    """`input_reference` as an object (OpenAI's shape; the SDK sends it as `input_reference[image_url]` form fields)."""

    model_config = ConfigDict(extra="forbid")

    image_url: str = Field(description="a data URL (data:image/png;base64,...), or an http(s) URL on a host the "
                           "server's references.allowed_url_hosts names")


REFERENCE_DOC = ("image-to-video: the image the video starts from (PNG, JPEG or WebP): a file part of the multipart "
                 "form, a data URL, or {\"image_url\": ...}; scaled to cover the request's size and centre-cropped")
InputReference = Annotated[
    bytes | str | ImageReference | None,
    WithJsonSchema({"anyOf": [{"type": "string", "description": "a data URL or an allowed http(s) URL"},
                              {"type": "object", "properties": {"image_url": {"type": "string"}},
                               "required": ["image_url"], "additionalProperties": False}, {"type": "null"}],
                    "description": REFERENCE_DOC}),
]
"""Upload bytes (multipart; the ingress reads at most `references.max_bytes` + 1 of a file part), a URL string, or
the object; `serve_app.references` reads and checks each."""


class VideoCreateBody(BaseModel):
    r"""
    The body of `POST /v1/videos`, as JSON or multipart form (the openai SDK sends form fields, i.e. strings; lax
    mode reads numbers from them). Besides OpenAI's fields it takes the generation knobs, under short names or the
    diffusers names (`steps` / `num_inference_steps`, `frames` / `num_frames`, `guidance_scale` / `guidance`).
    Numbers are finite and never booleans; every field has a bound, so no value can overflow what follows.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str = Field(max_length=10_000, description="what to generate")
    model: str | None = Field(None, max_length=256, description="the served model's name (GET /v1/models)")
    seconds: Float | None = Field(None, gt=0, le=3600, description="duration; frames = seconds x fps, rounded")
    size: str | None = Field(None, max_length=32, description="'WIDTHxHEIGHT', e.g. '16x16'")
    input_reference: InputReference = Field(None, description=REFERENCE_DOC)
    frames: Int | None = Field(None, ge=1, le=1024, validation_alias=AliasChoices(*API_ALIASES["frames"]))
    steps: Int | None = Field(None, ge=1, le=1000, validation_alias=AliasChoices(*API_ALIASES["steps"]))
    guidance_scale: Float | None = Field(None, ge=0, le=100,
                                         validation_alias=AliasChoices(*API_ALIASES["guidance_scale"]))
    seed: Int | None = Field(None, ge=0, le=2**63 - 1)
    negative_prompt: str = Field("", max_length=10_000)
    fps: Int | None = Field(None, ge=1, le=120)
    pab: str | dict[str, Any] | None = Field(None, description=PAB_FIELD_DOC)


class VideoRemixBody(BaseModel):
    """The body of `POST /v1/videos/{video_id}/remix`: a new prompt (and our `strength`); everything else (model,
    size, frames, steps, fps, guidance, PAB, seed) is the source video's."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=10_000, description="what the remix shows")
    strength: Float | None = Field(None, gt=0, le=1, description=(
        "how much to change (SDEdit: the fraction of the denoising steps re-run from the source noised to that "
        "level); 1 ignores the source; default 0.8"))


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """The OpenAI Video object, plus our extras (`frames`, `fps`, `seed`, `steps`, `stats`, `timings`)."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled"]
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    seconds: str
    size: str
    prompt: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    input_reference_sha256: str | None = Field(
        None, description="image-to-video: sha256 of the fitted reference PNG the video starts from (never the pixels)")
    frames: int
    fps: int
    seed: int
    steps: int
    attempt: int = Field(0, description="runs of the job started so far (a job lost with its worker runs again)")
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
