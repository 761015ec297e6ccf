"""The one resolver on the model card: what the ingress validates requests against without loading the model.
Checked against the real pipelines' own `validate_params`, so the card can never accept what a worker would refuse
(or the reverse). (Moved from tests/serve_app/test_model_card.py with the card and the resolver.)"""

from __future__ import annotations

import pytest

from pab.config import PABConfigError
from pab.runtime.pipelines import GenerationParams, GenerationParamsError, VideoGenerator, load_pipeline, validate_params
from pab.runtime.request.card import ModelCard, seconds_label
from pab.runtime.request.params import RequestError
from pab.runtime.request.request import GenerationRequest
from pab.runtime.request.resolve import resolve, resolve_pab
from serve_app.config import LimitsConfig

LIMITS = LimitsConfig()


@pytest.fixture(scope="module", params=["tiny-latte", "tiny-cogvideox"])
def loaded(request):
    generator = VideoGenerator(load_pipeline(request.param), pab="reference")
    card = ModelCard.from_generator(request.param, generator)
    return generator, ModelCard.model_validate_json(card.model_dump_json())  # as the ingress reads it


def _verdict(fn):
    try:
        fn()
    except RequestError as exc:
        return exc.field
    return "ok"


@pytest.mark.parametrize("size", [(32, 32), (30, 32), (32, 36), (48, 16), (64, 64)])
@pytest.mark.parametrize("frames", [1, 5, 8, 9, 13])
def test_card_validates_like_the_pipeline(loaded, size, frames):
    generator, card = loaded
    width, height = size
    params = GenerationParams(prompt="a cat", num_frames=frames, width=width, height=height)
    expected = _verdict(lambda: validate_params(generator.pipeline, params))
    request = GenerationRequest(prompt="a cat", num_frames=frames, width=width, height=height)
    assert _verdict(lambda: resolve(request, card, default_pab="reference", limits=LIMITS)) == expected


def test_resolve_fills_defaults_and_draws_a_seed(loaded):
    generator, card = loaded
    resolved = resolve(GenerationRequest(prompt="a dog"), card, default_pab="PAB-246", limits=LIMITS)
    for key, value in generator.defaults.items():
        assert getattr(resolved, key) == value
    assert resolved.model == card.name and resolved.seed is not None
    assert resolved.pab == generator.resolve_pab("PAB-246").to_dict()
    assert resolve(GenerationRequest(prompt="a dog", seed=5), card, default_pab="none", limits=LIMITS).seed == 5
    with pytest.raises(RequestError) as info:
        resolve(GenerationRequest(prompt="a dog", model="sora-2"), card, default_pab="reference", limits=LIMITS)
    assert info.value.field == "model" and "sora-2" in str(info.value)
    assert (info.value.status, info.value.code) == (404, "model_not_found")


def test_limits_apply_before_model_rules(loaded):
    _, card = loaded
    with pytest.raises(RequestError, match="max_frames") as info:
        resolve(GenerationRequest(prompt="a dog", num_frames=999), card, default_pab="reference", limits=LIMITS)
    assert info.value.code == "limit_exceeded"


def test_pab_presets_json_and_overrides(loaded):
    generator, card = loaded
    assert resolve_pab(None, card.adapter, "PAB-357").to_dict() == generator.resolve_pab("PAB-357").to_dict()
    as_json = resolve_pab('{"preset": "PAB-246", "spatial": {"range": 3}}', card.adapter, "reference").to_dict()
    assert as_json["spatial"]["range"] == 3 and as_json["name"] == "PAB-246+custom"
    assert as_json["spatial"]["window"] == generator.resolve_pab("PAB-246").to_dict()["spatial"]["window"]
    assert resolve_pab({"mlp": None, "name": "mine"}, card.adapter, "reference").name == "mine"
    for bad in ("PAB-999", {"spatial": {"range": 0}}, {"preset": "none", "bogus": 1}, "{not json"):
        with pytest.raises(PABConfigError):
            resolve_pab(bad, card.adapter, "reference")


def test_seconds_to_frames_respects_temporal_compression(loaded):
    _, card = loaded
    fps = card.defaults["fps"]
    frames = card.frames_for_seconds(1, fps)
    if card.temporal_compression == 1:
        assert frames == fps
    else:
        assert (frames - 1) % card.temporal_compression == 0 and abs(frames - fps) <= card.temporal_compression
    assert seconds_label(8, 8) == "1" and seconds_label(9, 8) == "1.125"


def test_closed_vocabulary_is_checked_the_same_by_the_card_and_the_pipeline():
    from pab.runtime.tinyvideo.pipeline import random_tiny_shapes

    generator = VideoGenerator(random_tiny_shapes(0))
    card = ModelCard.model_validate_json(ModelCard.from_generator("tiny-shapes", generator).model_dump_json())
    for prompt, negative, expected in [
        ("a red square moving left", "", "ok"),
        ("A red square, moving left.", "", "ok"),  # case, commas and stops are read the same
        ("a cat runs in the park", "", "prompt"),
        ("a red square moving left", "blurry", "negative_prompt"),
        ("a red square moving left moving left", "", "prompt"),  # 7 words: the encoder reads 6
    ]:
        params = GenerationParams(prompt=prompt, negative_prompt=negative, seed=0)
        request = GenerationRequest(prompt=prompt, negative_prompt=negative, seed=0)
        assert _verdict(lambda: generator.resolve(params)) == expected, prompt
        assert _verdict(lambda: resolve(request, card, default_pab="reference", limits=LIMITS)) == expected, prompt
    with pytest.raises(GenerationParamsError, match=r"unknown words \['cat', 'runs', 'in', 'the', 'park'\].*It knows: "):
        resolve(GenerationRequest(prompt="a cat runs in the park"), card, default_pab="reference", limits=LIMITS)
