"""Pixels a client conditions a generation on: a reference image the video starts from (image-to-video).

The serving edge decodes, checks and fits the client's upload to the request's size once; what travels inward (to
the store, the workers and `VideoGenerator`) is this typed value, PNG-encoded so a re-run sees exactly the same
pixels. Torch-free (PIL + numpy), so the ingress builds it.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReferenceImage(BaseModel):
    r"""
    An RGB image already fitted to the request's `width` x `height`.

    Args:
        png: The fitted image, PNG-encoded (lossless: a re-run decodes the same uint8 pixels).
        width, height: Its size in pixels; `resolve` checks they equal the request's.
        sha256: Hex digest of `png`, for logs and the Video object (the pixels themselves never go there).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    png: bytes = Field(repr=False)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    sha256: str

    @model_validator(mode="after")
    def _digest_matches(self) -> "ReferenceImage":
        if hashlib.sha256(self.png).hexdigest() != self.sha256:
            raise ValueError("sha256 does not match the PNG bytes")
        return self

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> "ReferenceImage":
        """uint8 [H, W, 3] -> a reference image."""
        array = np.ascontiguousarray(rgb, dtype=np.uint8)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected uint8 [H, W, 3], got shape {array.shape}")
        buffer = io.BytesIO()
        Image.fromarray(array, mode="RGB").save(buffer, format="PNG", optimize=False)
        png = buffer.getvalue()
        return cls(png=png, width=array.shape[1], height=array.shape[0], sha256=hashlib.sha256(png).hexdigest())

    def rgb(self) -> np.ndarray:
        """The pixels, uint8 [H, W, 3]."""
        return np.asarray(self.pil(), dtype=np.uint8)

    def pil(self) -> Image.Image:
        """The image as a PIL RGB image (what diffusers' image-to-video pipelines take as `image`)."""
        with Image.open(io.BytesIO(self.png)) as image:
            return image.convert("RGB")
