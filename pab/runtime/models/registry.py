"""The models `pab.runtime.pipelines.load_pipeline` serves by name, with the generation defaults each was sized for:
tiny random-weight pipelines of real diffusers classes (`tiny`) and the trained tiny-shapes model (`tinyvideo`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from diffusers import DiffusionPipeline

from pab.runtime.models import tiny
from pab.runtime.tinyvideo.pipeline import DEFAULTS as TINY_SHAPES_DEFAULTS
from pab.runtime.tinyvideo.pipeline import MODEL_NAME as TINY_SHAPES, load_tiny_shapes


@dataclass(frozen=True)
class EmbeddedModel:
    r"""
    A tiny model servable by name, with the generation defaults it was sized for.

    Args:
        build (`Callable[..., DiffusionPipeline]`): Builder taking `seed=`.
        num_frames, height, width (`int`): Default output size; the frame count is one the model accepts.
        num_inference_steps (`int`), guidance_scale (`float`), fps (`int`): Defaults as the real model family uses
            (guidance, fps) or sized for fast CPU runs (steps).
        call_kwargs (`Mapping[str, Any]`): Extra pipeline `__call__` arguments this tiny build needs on every call.
    """

    build: Callable[..., DiffusionPipeline]
    num_frames: int
    height: int = 32
    width: int = 32
    num_inference_steps: int = 10
    guidance_scale: float = 5.0
    fps: int = 8
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Generation defaults, keyed like `pab.runtime.pipelines.GenerationParams` fields."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("build", "call_kwargs")}


RANDOM_MODELS: dict[str, EmbeddedModel] = {
    "tiny-latte": EmbeddedModel(tiny.tiny_latte_pipeline, num_frames=tiny.LATTE_FRAMES, guidance_scale=7.5),
    "tiny-cogvideox": EmbeddedModel(tiny.tiny_cogvideox_pipeline, num_frames=9, guidance_scale=6.0),
    "tiny-wan": EmbeddedModel(tiny.tiny_wan_pipeline, num_frames=9, guidance_scale=5.0, fps=16),
    "tiny-wan22": EmbeddedModel(tiny.tiny_wan22_pipeline, num_frames=9, guidance_scale=4.0, fps=16),
    "tiny-hunyuan": EmbeddedModel(tiny.tiny_hunyuan_pipeline, num_frames=9, guidance_scale=6.0, fps=24,
                                  call_kwargs=tiny.HUNYUAN_CALL_KWARGS),
    "tiny-allegro": EmbeddedModel(tiny.tiny_allegro_pipeline, num_frames=tiny.ALLEGRO_FRAMES, height=tiny.ALLEGRO_SIZE,
                                  width=tiny.ALLEGRO_SIZE, guidance_scale=7.5, fps=15),
    "tiny-mochi": EmbeddedModel(tiny.tiny_mochi_pipeline, num_frames=7, guidance_scale=4.5, fps=30),
    "tiny-ltx": EmbeddedModel(tiny.tiny_ltx_pipeline, num_frames=9, guidance_scale=3.0, fps=24),
    # image-to-video: requests carry `input_reference` (the card's `image_to_video`)
    "tiny-wan-i2v": EmbeddedModel(tiny.tiny_wan_i2v_pipeline, num_frames=9, guidance_scale=5.0, fps=16),
    "tiny-cogvideox-i2v": EmbeddedModel(tiny.tiny_cogvideox_i2v_pipeline, num_frames=9, guidance_scale=6.0),
    "tiny-ltx-i2v": EmbeddedModel(tiny.tiny_ltx_i2v_pipeline, num_frames=9, guidance_scale=3.0, fps=24),
}
"""The tiny random-weight pipelines (`tiny`), sized for fast CPU runs."""

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    **RANDOM_MODELS,
    TINY_SHAPES: EmbeddedModel(load_tiny_shapes, num_frames=4, height=16, width=16, **TINY_SHAPES_DEFAULTS),
}
"""Every model `load_pipeline` serves by name: the random ones and the trained tiny-shapes."""
