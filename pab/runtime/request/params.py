"""What a generation request may ask for, checked without torch: the parameters, their bounds, and the sizes a
pipeline can produce exactly.

It lives apart from `pab.runtime.pipelines` (which re-exports all of it) so that processes that only validate requests, such
as the serving ingress and the generator replicas, do not pay for importing torch and diffusers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from pab.geometry import decode_frame_batch, decode_tiles, patch_sizes, pixel_multiple, spatial_scale, temporal_scale

if TYPE_CHECKING:  # annotations only: importing them is what this module exists to avoid
    from diffusers import DiffusionPipeline

MAX_SEED = 2**63 - 1


class RequestError(ValueError):
    r"""
    A request the server refuses before running it; the one error type `resolve` raises.

    Args:
        field: The internal field at fault (`num_frames`, `pab`, ...; None for the request as a whole);
            `pab.runtime.request.api` names it as the client sent it.
        message: What is wrong and what to do.
        code: The OpenAI-style error code (`invalid_value`, `limit_exceeded`, `model_not_found`, ...).
        status: The HTTP status the API answers with.
    """

    def __init__(self, field: str | None, message: str, *, code: str = "invalid_value", status: int = 400) -> None:
        super().__init__(message)
        self.field, self.code, self.status = field, code, status

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with every field, so the error crosses Ray (a worker or replica raising it to its caller) intact."""
        return _rebuild_request_error, (type(self), self.field, str(self), self.code, self.status)


def _rebuild_request_error(cls: type[RequestError], field: str | None, message: str, code: str, status: int) -> RequestError:
    error = RequestError.__new__(cls)
    RequestError.__init__(error, field, message, code=code, status=status)
    return error


class GenerationParamsError(RequestError):
    """A request parameter is invalid; the message starts with the field's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, f"{field}: {message}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise GenerationParamsError(name, f"must be an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class GenerationParams:
    r"""
    One text-to-video request. `None` fields take the model's default (see `VideoGenerator.resolve`).

    Args:
        prompt (`str`): What to generate.
        negative_prompt (`str`): What to steer away from (used when guidance_scale > 1).
        num_frames, height, width (`int`): Output size; `validate_params` checks the model can produce it exactly.
        num_inference_steps (`int`): Denoising steps.
        guidance_scale (`float`): Classifier-free guidance; <= 1 turns CFG off.
        seed (`int`): Same seed, same frames. `None` draws one; the result's params record it.
        fps (`int`): Frame rate for encoding; does not change the frames.
    """

    prompt: str
    negative_prompt: str = ""
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    fps: int | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 10_000:
                raise GenerationParamsError(name, f"must be a string of at most 10000 characters, got {value!r:.80}")
        if not self.prompt.strip():
            raise GenerationParamsError("prompt", "must not be empty")
        limits = {"num_frames": (1, 1024), "height": (1, 8192), "width": (1, 8192),
                  "num_inference_steps": (1, 1000), "seed": (0, MAX_SEED), "fps": (1, 120)}
        for name, (lo, hi) in limits.items():
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), lo, hi)
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not (math.isfinite(g) and 0 <= g <= 100)):
            raise GenerationParamsError("guidance_scale", f"must be a number in [0, 100], got {g!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GenerationParamsError(unknown[0], f"unknown parameter; allowed: {sorted(known)}")
        if "prompt" not in data:
            raise GenerationParamsError("prompt", "is required")
        return cls(**data)


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as a closed-vocabulary text encoder reads them (lower case, commas and stops dropped)."""
    return text.lower().replace(",", " ").replace(".", " ").split()


def _check_vocabulary(pipeline: DiffusionPipeline, params: GenerationParams) -> None:
    """A model with a closed vocabulary (`pipeline.prompt_vocabulary`) would read other words as unknown and draw
    something arbitrary: say which words it knows instead."""
    vocab = getattr(pipeline, "prompt_vocabulary", None)
    if not vocab:
        return
    known, max_words = set(vocab["words"]), vocab["max_words"]
    for name in ("prompt", "negative_prompt"):
        words = prompt_words(getattr(params, name))
        unknown = [w for w in words if w not in known]
        if unknown or len(words) > max_words:
            problem = f"unknown words {unknown}" if unknown else f"{len(words)} words"
            raise GenerationParamsError(
                name, f"this model has a closed vocabulary of {len(known)} words and reads at most {max_words} per "
                f"prompt, e.g. {vocab['example']!r}; got {problem}. It knows: {' '.join(vocab['words'])}"
            )


def validate_params(pipeline: DiffusionPipeline, params: GenerationParams) -> None:
    """
    Reject sizes the pipeline would silently change or refuse mid-job: height/width must be multiples of VAE
    scale x patch size and of the pipeline's own pixel multiple, the frame count must survive temporal compression
    exactly, Latte takes only its trained `video_length`, a tiled-only VAE only whole tiles; and, for a model with a
    closed vocabulary, prompts it cannot read.
    """
    _check_vocabulary(pipeline, params)
    transformer = pipeline.transformer
    config = transformer.config
    patch_t, patch_h, patch_w = patch_sizes(transformer)
    scale = spatial_scale(pipeline)
    _check_pixels(pipeline, params, scale, patch_h, patch_w)
    frames = params.num_frames
    if frames is None:
        raise GenerationParamsError("num_frames", "is required")
    video_length = config.get("video_length")
    if video_length is not None and frames not in (video_length, 1):
        raise GenerationParamsError(
            "num_frames", f"must be {video_length} for this model (its temporal embedding is trained for {video_length} frames), got {frames}"
        )
    tscale = temporal_scale(pipeline)
    if (frames - 1) % tscale:
        near = max(1, round((frames - 1) / tscale) * tscale + 1)
        raise GenerationParamsError(
            "num_frames", f"must be {tscale}k+1 for this model (VAE compresses time {tscale}x), got {frames}; try {near}"
        )
    latent_frames = (frames - 1) // tscale + 1
    if latent_frames % patch_t:
        raise GenerationParamsError(
            "num_frames", f"must give a latent frame count divisible by the temporal patch {patch_t}, got {frames} ({latent_frames} latent)"
        )
    batch = decode_frame_batch(pipeline)
    if batch and (latent_frames - 1) % batch:
        near = max(1, round((latent_frames - 1) / batch)) * batch * tscale + 1
        raise GenerationParamsError(
            "num_frames", f"must be {batch * tscale}k+1 for this model (its VAE decodes {batch} latent frames at a "
            f"time and needs {batch}k+1 of them), got {frames} ({latent_frames} latent); try {near}"
        )
    _check_tiles(pipeline, latent_frames, params.height // scale, params.width // scale)
    rope_max = config.get("rope_max_seq_len")
    if rope_max:
        for name, length in (("num_frames", latent_frames // patch_t), ("height", params.height // scale // patch_h),
                             ("width", params.width // scale // patch_w)):
            if length > rope_max:
                raise GenerationParamsError(name, f"is too large: {length} positions after patching, the model's rotary table holds {rope_max}")


def _check_pixels(pipeline: DiffusionPipeline, params: GenerationParams, scale: int, patch_h: int, patch_w: int) -> None:
    """Height and width: multiples of what the latents need (VAE scale x patch) and of the pipeline's own check."""
    own = pixel_multiple(pipeline)
    for name, patch in (("height", patch_h), ("width", patch_w)):
        value, multiple = getattr(params, name), math.lcm(scale * patch, own)
        if value is None or value % multiple:
            near = max(multiple, round((value or 0) / multiple) * multiple)
            why = f"VAE x{scale} x patch {patch}" + (f", and the pipeline takes multiples of {own}" if own > 1 else "")
            raise GenerationParamsError(
                name, f"must be a multiple of {multiple} for this model ({why}), got {value}; try {near}"
            )


def _check_tiles(pipeline: DiffusionPipeline, frames: int, height: int, width: int) -> None:
    """A VAE that decodes only whole tiles (Allegro) leaves the rest of a misfit video black: refuse the size."""
    tiles = decode_tiles(pipeline)
    if tiles is None:
        return
    tscale, scale = temporal_scale(pipeline), spatial_scale(pipeline)
    for name, length, (kernel, stride), to_pixels in (
        ("num_frames", frames, tiles[0], lambda n: (n - 1) * tscale + 1),
        ("height", height, tiles[1], lambda n: n * scale),
        ("width", width, tiles[2], lambda n: n * scale),
    ):
        if length < kernel or (length - kernel) % stride:
            fit = kernel + max(0, round((length - kernel) / stride)) * stride
            raise GenerationParamsError(
                name, f"this model's VAE decodes whole tiles only ({kernel} latents, then every {stride}): "
                f"{length} latents do not fit; try {to_pixels(fit)}"
            )
