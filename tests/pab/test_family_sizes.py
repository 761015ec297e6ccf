"""Every family's size rules hold at resolve, from the model card alone (as the ingress reads it), before a job
exists: sizes its pipeline would refuse mid-job (its own pixel multiple, Allegro's whole VAE tiles) or change (frames
its VAE cannot compress or decode exactly) are a 400 naming the field; sizes it accepts generate exactly that video."""

from __future__ import annotations

import inspect
import math
import re

import diffusers
import numpy as np
import pytest

from pab.geometry import PIPELINE_PIXEL_MULTIPLES, patch_sizes
from pab.runtime.models.registry import RANDOM_MODELS
from pab.runtime.pipelines import VideoGenerator, load_pipeline
from pab.runtime.request.card import ModelCard
from pab.runtime.request.params import RequestError
from pab.runtime.request.request import GenerationRequest
from pab.runtime.request.resolve import resolve

from .model_mixin import reference_image

MODELS = sorted(RANDOM_MODELS)


@pytest.mark.parametrize("pipeline", sorted(PIPELINE_PIXEL_MULTIPLES))
def test_pixel_multiples_are_the_pipelines_own(pipeline: str) -> None:
    """The table says what the installed diffusers' `check_inputs` raises on."""
    source = inspect.getsource(getattr(diffusers, pipeline).check_inputs)
    found = set(re.findall(r"height % (\d+) != 0 or width % \1 != 0", source))
    assert found == {str(PIPELINE_PIXEL_MULTIPLES[pipeline])}


@pytest.fixture(scope="module")
def generators() -> dict[str, VideoGenerator]:
    return {}


def _generator(cache: dict[str, VideoGenerator], model: str) -> VideoGenerator:
    if model not in cache:
        cache[model] = VideoGenerator(load_pipeline(model), "PAB-246")
    return cache[model]


def _card(gen: VideoGenerator, model: str) -> ModelCard:
    return ModelCard.model_validate_json(ModelCard.from_generator(model, gen).model_dump_json())  # as the ingress


def _request(gen: VideoGenerator, model: str, **size: int) -> GenerationRequest:
    fields = {k: gen.defaults[k] for k in ("num_frames", "height", "width")} | size
    reference = reference_image(fields["width"], fields["height"], seed=1) if gen.image_to_video else None
    return GenerationRequest(prompt="a red car", seed=4, num_inference_steps=2, model=model, input_reference=reference,
                             **fields)


def _refused(gen: VideoGenerator, model: str) -> list[tuple[dict[str, int], str]]:
    """(size, field) pairs the family must refuse: off its pixel multiple, frames its VAE cannot compress exactly
    (or, Latte, not its trained count), and past the whole tiles of a tiled-only VAE."""
    geometry = _card(gen, model).geometry
    _, patch_h, patch_w = patch_sizes(gen.pipeline.transformer)
    multiple = math.lcm(geometry["spatial_scale"] * patch_w, geometry["pixel_multiple"])
    width, frames = gen.defaults["width"], gen.defaults["num_frames"]
    cases = [({"width": width + multiple // 2}, "width"), ({"num_frames": frames + 1}, "num_frames")]
    if geometry["pixel_multiple"] > geometry["spatial_scale"] * patch_w:  # refused only for the pipeline's own rule
        cases.append(({"width": width + geometry["spatial_scale"] * patch_w}, "width"))
    if geometry["decode_tiles"]:
        cases.append(({"width": width + multiple}, "width"))  # one latent past a whole tile
    if geometry["decode_frame_batch"]:  # one latent frame more than a whole number of decode batches
        cases.append(({"num_frames": frames + geometry["temporal_scale"]}, "num_frames"))
    return cases


@pytest.mark.parametrize("model", MODELS)
def test_refused_sizes_are_a_400_at_resolve(generators, model: str) -> None:
    gen = _generator(generators, model)
    card = _card(gen, model)
    for size, field in _refused(gen, model):
        with pytest.raises(RequestError) as raised:
            resolve(_request(gen, model, **size), card)
        assert (raised.value.field, raised.value.status) == (field, 400), (size, str(raised.value))
        assert "try" in str(raised.value) or "must be" in str(raised.value)


def _accepted(gen: VideoGenerator, model: str) -> dict[str, int]:
    """A size other than the default that the family takes: one pixel multiple (or one tile stride) wider, and the
    next frame count its VAE compresses exactly (Latte: its one trained count)."""
    geometry = _card(gen, model).geometry
    _, _, patch_w = patch_sizes(gen.pipeline.transformer)
    step = math.lcm(geometry["spatial_scale"] * patch_w, geometry["pixel_multiple"])
    if geometry["decode_tiles"]:
        step = math.lcm(step, geometry["decode_tiles"][2][1] * geometry["spatial_scale"])
    frames = gen.defaults["num_frames"]
    if not gen.pipeline.transformer.config.get("video_length") and not geometry["decode_tiles"]:
        frames += geometry["temporal_scale"] * (geometry["decode_frame_batch"] or 1)
    return {"width": gen.defaults["width"] + step, "num_frames": frames}


@pytest.mark.parametrize("model", MODELS)
def test_accepted_sizes_generate_exactly(generators, model: str) -> None:
    gen = _generator(generators, model)
    size = _accepted(gen, model)
    resolved = resolve(_request(gen, model, **size), _card(gen, model))
    result = gen.generate(resolved)
    assert result.frames.shape == (size["num_frames"], gen.defaults["height"], size["width"], 3)
    assert result.frames.dtype == np.uint8 and result.stats.pab.attention.calls > 0
