"""Pixels a client conditions a generation on: a reference image the video starts from (image-to-video), or the
frames of a finished video a remix edits (video-to-video).

The serving edge decodes, checks and fits the client's upload to the request's size once; what travels inward (to
the store, the workers and `VideoGenerator`) is this typed value, PNG-encoded so a re-run sees exactly the same
pixels. A remix's source frames are the source job's exact uint8 frames (its `frames.png` in the store, never the
lossy mp4), copied into the remix's own job folder when it is accepted, so the remix replays even after its source
expired. A job record keeps only each payload's metadata (`PixelsInfo`: size, digest, ...); the PNG is a file of its
own in the job store, attached (digest checked) only where the job runs.
Torch-free (PIL + numpy), so the ingress builds them.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (lossless, deterministic)."""
    array = np.ascontiguousarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def decode_png(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_frames(frames: np.ndarray) -> bytes:
    """uint8 [F, H, W, 3] -> one PNG with the frames stacked top to bottom (what the store keeps as `frames.png`)."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected uint8 [F, H, W, 3], got shape {frames.shape}")
    return encode_png(frames.reshape(-1, *frames.shape[2:]))


def decode_frames(png: bytes, num_frames: int) -> np.ndarray:
    """`encode_frames`' PNG -> uint8 [F, H, W, 3]."""
    strip = decode_png(png)
    if strip.shape[0] % num_frames:
        raise ValueError(f"a {strip.shape[0]}-row frame strip does not split into {num_frames} frames")
    return strip.reshape(num_frames, -1, *strip.shape[1:])


class PixelsInfo(BaseModel):
    """A pixel payload without its PNG: what a job record keeps (the PNG is a file of its own in the job store, so
    reading a record to answer a poll never reads the pixels). `attach` gives back the payload, digest checked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(ge=1)
    height: int = Field(ge=1)
    sha256: str

    _with_png: ClassVar[type["LosslessPixels"]]
    """The payload type this describes, set by each `LosslessPixels` subclass."""

    def attach(self, png: bytes) -> "LosslessPixels":
        """The payload with `png`; a ValueError when `png` is not the PNG this describes (its sha256 differs)."""
        return self._with_png.model_validate({**self.model_dump(), "png": png})


class LosslessPixels(PixelsInfo):
    """Pixels that travel as one PNG (base64 in JSON) with their size and digest, checked on every load."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    png: bytes = Field(repr=False)

    _info: ClassVar[type[PixelsInfo]]
    """The info type this payload pairs with: its first base that carries no PNG."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Pair the payload with its info type, both ways (`detach` and `attach`)."""
        super().__init_subclass__(**kwargs)
        cls._info = next(b for b in cls.__mro__ if issubclass(b, PixelsInfo) and not issubclass(b, LosslessPixels))
        cls._info._with_png = cls

    @model_validator(mode="after")
    def _digest_matches(self) -> "LosslessPixels":
        if hashlib.sha256(self.png).hexdigest() != self.sha256:
            raise ValueError("sha256 does not match the PNG bytes")
        return self

    def detach(self) -> PixelsInfo:
        """The metadata without the PNG (the info type this payload's class pairs with)."""
        return self._info.model_validate(self.model_dump(exclude={"png"}))


class ReferenceImageInfo(PixelsInfo):
    """A reference image as a job record keeps it (`ReferenceImage` less its PNG)."""


class ReferenceImage(LosslessPixels, ReferenceImageInfo):
    r"""
    An RGB image already fitted to the request's `width` x `height`.

    Args:
        png: The fitted image, PNG-encoded (lossless: a re-run decodes the same uint8 pixels).
        width, height: Its size in pixels; `resolve` checks they equal the request's.
        sha256: Hex digest of `png`, for logs and the Video object (the pixels themselves never go there).
    """

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> "ReferenceImage":
        """uint8 [H, W, 3] -> a reference image."""
        png = encode_png(rgb)
        return cls(png=png, width=rgb.shape[1], height=rgb.shape[0], sha256=hashlib.sha256(png).hexdigest())

    def rgb(self) -> np.ndarray:
        """The pixels, uint8 [H, W, 3]."""
        return decode_png(self.png)

    def pil(self) -> Image.Image:
        """The image as a PIL RGB image (what diffusers' image-to-video pipelines take as `image`)."""
        with Image.open(io.BytesIO(self.png)) as image:
            return image.convert("RGB")


DEFAULT_STRENGTH = 0.8
"""Remix strength when the client names none: the fraction of the denoising steps re-run from the source noised to
that level. On tiny-shapes, 0.7 and up turn "red" into "blue" on every measured seed and keep the motion (QUALITY.md);
diffusers' CogVideoX video-to-video pipeline defaults to 0.8 too."""


class SourceVideoInfo(PixelsInfo):
    """A remix's source as a job record keeps it (`SourceVideo` less its PNG)."""

    video_id: str = Field(max_length=64)
    num_frames: int = Field(ge=1)
    strength: float = Field(DEFAULT_STRENGTH, gt=0, le=1)


class SourceVideo(LosslessPixels, SourceVideoInfo):
    r"""
    What a remix edits: the source job's exact frames and how strongly to change them (SDEdit).

    Args:
        video_id: The source job (the Video's `remixed_from_video_id`).
        png: Its uint8 frames, stacked top to bottom in one PNG (`encode_frames`; lossless).
        width, height, num_frames: Their size; `resolve` checks they equal the request's.
        sha256: Hex digest of `png`.
        strength: In (0, 1]: 1 ignores the source (text-to-video from the seed), smaller keeps more of it.
    """

    @classmethod
    def from_png(cls, video_id: str, png: bytes, num_frames: int, strength: float = DEFAULT_STRENGTH) -> "SourceVideo":
        """A source from the store's `frames.png` of a job with `num_frames` frames."""
        frames = decode_frames(png, num_frames)
        return cls(video_id=video_id, png=png, width=frames.shape[2], height=frames.shape[1], num_frames=num_frames,
                   sha256=hashlib.sha256(png).hexdigest(), strength=strength)

    def frames(self) -> np.ndarray:
        """uint8 [F, H, W, 3]."""
        return decode_frames(self.png, self.num_frames)

    def pil_frames(self) -> list[Image.Image]:
        """The frames as PIL RGB images (what diffusers' video-to-video pipelines take as `video`)."""
        return [Image.fromarray(f, mode="RGB") for f in self.frames()]
