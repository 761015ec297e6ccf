"""Training-free conditioning of the tiny shapes pipeline: image-to-video (RePaint-style first frame) and remix
(SDEdit), alone and batched through `VideoGenerator`, and the card flags and resolver rules that gate them."""

import numpy as np
import pytest
import torch
from PIL import Image

from pab.runtime.pipelines import VideoGenerator
from pab.runtime.request.conditioning import ReferenceImage, SourceVideo, encode_frames
from pab.runtime.request.params import RequestError
from pab.runtime.request.request import GenerationRequest, batch_key
from pab.runtime.request.resolve import check_conditioning
from pab.runtime.tinyvideo.data import render_clip
from pab.runtime.tinyvideo.pipeline import random_tiny_shapes
from pab.runtime.tinyvideo.sampling import start_step
from pab.runtime.tools.quality import psnr

STEPS = 4


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def _reference(colour: str = "red", start: tuple[float, float] = (8.0, 6.0)) -> np.ndarray:
    return _uint8(render_clip(colour, "square", "down", start)[0].permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def pipe():
    return random_tiny_shapes(0)


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator(random_tiny_shapes(0), batch_invariant=True)


def _run(pipe, prompt="a red square moving down", seed=3, **kw):
    return _uint8(pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS, **kw).frames)


def test_the_first_frame_is_the_reference_and_the_rest_is_generated(pipe):
    ref = _reference()
    out = _run(pipe, image=Image.fromarray(ref))[0]
    assert psnr(out[:1], ref[None]) >= 60.0  # exact in practice: the clean reference is put back after the last step
    np.testing.assert_array_equal(out[0], ref)
    plain = _run(pipe)[0]
    assert not np.array_equal(out[1:], plain[1:])  # the anchored first frame steers the other frames


def test_image_size_must_match_and_image_and_video_exclude_each_other(pipe):
    with pytest.raises(ValueError, match="image must be 16x16"):
        _run(pipe, image=Image.new("RGB", (8, 8)))
    frames = [Image.fromarray(f) for f in _run(pipe)[0]]
    with pytest.raises(ValueError, match="not both"):
        _run(pipe, image=Image.fromarray(_reference()), video=frames)
    with pytest.raises(ValueError, match="video must have 4 frames"):
        _run(pipe, video=frames[:3])
    with pytest.raises(ValueError, match="strength must be in"):
        _run(pipe, video=frames, strength=0.0)


def test_sdedit_strength_one_is_text_to_video_and_lower_strength_keeps_the_source(pipe):
    source = _run(pipe, "a red square moving left", seed=1)[0]
    frames = [Image.fromarray(f) for f in source]
    np.testing.assert_array_equal(_run(pipe, "a blue square moving left", seed=1, video=frames, strength=1.0),
                                  _run(pipe, "a blue square moving left", seed=1))
    gentle = _run(pipe, "a blue square moving left", seed=1, video=frames, strength=0.25)[0]
    strong = _run(pipe, "a blue square moving left", seed=1, video=frames, strength=0.75)[0]
    err = lambda a: float(np.abs(a.astype(int) - source.astype(int)).mean())  # noqa: E731
    assert err(gentle) < err(strong)


def test_sdedit_runs_the_last_steps_only():
    assert [start_step(10, s) for s in (1.0, 0.8, 0.5, 0.01)] == [0, 2, 5, 9]
    gen = VideoGenerator(random_tiny_shapes(0))
    source = gen.generate(GenerationRequest(prompt="a red disc moving up", seed=2, num_inference_steps=10))
    remix = SourceVideo.from_png("video_src", encode_frames(source.frames), 4, strength=0.5)
    seen = []
    gen.generate(GenerationRequest(prompt="a blue disc moving up", seed=2, num_inference_steps=10, remix=remix),
                 on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(5)]


def _i2v(seed: int, colour: str, start: tuple[float, float]) -> GenerationRequest:
    return GenerationRequest(prompt=f"a {colour} square moving down", seed=seed, num_inference_steps=STEPS,
                             input_reference=ReferenceImage.from_rgb(_reference(colour, start)))


def test_image_to_video_batched_equals_alone_byte_for_byte(generator):
    requests = [generator.resolve_request(r) for r in (_i2v(1, "red", (8, 5)), _i2v(2, "blue", (6, 6)))]
    batched = generator.generate_batch(requests)
    for request, result in zip(requests, batched):
        alone = generator.generate(request).frames
        np.testing.assert_array_equal(result.frames, alone)
        np.testing.assert_array_equal(alone[0], request.input_reference.rgb())


def test_remix_batched_equals_alone_byte_for_byte(generator):
    sources = [generator.generate(GenerationRequest(prompt="a red square moving left", seed=s,
                                                    num_inference_steps=STEPS)).frames for s in (4, 5)]
    requests = [generator.resolve_request(GenerationRequest(
        prompt=p, seed=s, num_inference_steps=STEPS, remix=SourceVideo.from_png(f"video_{s}", encode_frames(f), 4, 0.5)))
        for p, s, f in (("a blue square moving left", 4, sources[0]), ("a green square moving left", 5, sources[1]))]
    assert len({batch_key(r, per_sample_guidance=True) for r in requests}) == 1
    for request, result in zip(requests, generator.generate_batch(requests)):
        np.testing.assert_array_equal(result.frames, generator.generate(request).frames)


def test_batch_keys_separate_conditioning_kinds_and_strengths():
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    base = GenerationRequest(prompt="a red square moving left", seed=1, num_inference_steps=STEPS, model="m",
                             width=16, height=16, num_frames=4, guidance_scale=3.0)
    keys = {batch_key(r, per_sample_guidance=True) for r in (
        base, base.model_copy(update={"input_reference": ReferenceImage.from_rgb(frames[0])}),
        base.model_copy(update={"remix": SourceVideo.from_png("video_a", encode_frames(frames), 4, 0.5)}),
        base.model_copy(update={"remix": SourceVideo.from_png("video_a", encode_frames(frames), 4, 0.6)}))}
    assert len(keys) == 4


def test_card_flags_and_the_resolver_gate_conditioning(generator):
    card = generator.card
    assert card.image_to_video and card.remix
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    remix = SourceVideo.from_png("video_a", encode_frames(frames), 4)
    request = generator.resolve_request(GenerationRequest(prompt="a red square moving left", remix=remix))
    assert request.remix.strength == 0.8  # the documented default
    with pytest.raises(RequestError, match="no video-to-video pipeline") as exc:
        check_conditioning(card.model_copy(update={"remix": False}), request)
    assert exc.value.field == "remix"
    small = SourceVideo.from_png("video_a", encode_frames(frames[:, :8, :8]), 4)
    with pytest.raises(RequestError, match="source video is 8x8"):
        check_conditioning(card, request.model_copy(update={"remix": small}))
    both = request.model_copy(update={"input_reference": ReferenceImage.from_rgb(frames[0])})
    with pytest.raises(RequestError, match="cannot also take a reference image"):
        check_conditioning(card, both)


def test_source_video_round_trips_and_refuses_a_wrong_digest():
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 12, 3), dtype=np.uint8)
    source = SourceVideo.from_png("video_a", encode_frames(frames), 4)
    np.testing.assert_array_equal(source.frames(), frames)
    again = SourceVideo.model_validate_json(source.model_dump_json())
    assert again == source and (again.width, again.height) == (12, 8)
    with pytest.raises(ValueError, match="sha256"):
        SourceVideo(**{**source.model_dump(), "sha256": "0" * 64})
