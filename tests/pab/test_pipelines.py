"""The generation front door: loading, parameter validation, seeding, progress, PAB application and overrides."""

from __future__ import annotations


import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline, LattePipeline, WanPipeline

import pab.runtime.pipelines.generator as generator_module
from pab.adapters import UnsupportedModelError
from pab.config import PABConfigError
from pab.runtime.pipelines import (
    GenerationParams,
    GenerationParamsError,
    ModelLoadError,
    VideoGenerator,
    load_pipeline,
    pipeline_defaults,
    to_uint8,
    validate_params,
)
from pab.presets import get_preset
from pab.runtime.models.registry import RANDOM_MODELS as EMBEDDED_MODELS
from pab.runtime.request.conditioning import ReferenceImage
from pab.runtime.request.request import GenerationRequest
from pab.runtime.models.tiny import tiny_cogvideox_pipeline, tiny_latte_pipeline, tiny_wan_pipeline

PROMPT = "a red car drives fast on the road"
BUILDERS = {"tiny-latte": tiny_latte_pipeline, "tiny-cogvideox": tiny_cogvideox_pipeline, "tiny-wan": tiny_wan_pipeline}


def _params(**overrides) -> GenerationParams:
    return GenerationParams(**{"prompt": PROMPT, "seed": 0, "num_inference_steps": 4, "height": 16, "width": 16, **overrides})


_plain_params = _params


# ----------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name,cls", [("tiny-latte", LattePipeline), ("tiny-cogvideox", CogVideoXPipeline), ("tiny-wan", WanPipeline)])
def test_load_pipeline_builds_embedded_models_with_their_defaults(name, cls):
    pipe = load_pipeline(name, dtype="float32")
    assert type(pipe) is cls
    assert pipeline_defaults(pipe) == EMBEDDED_MODELS[name].defaults()
    assert pipe.transformer.dtype == torch.float32


def test_load_pipeline_from_saved_directory_matches_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny_cogvideox_pipeline().save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path))
    assert type(loaded) is CogVideoXPipeline
    defaults = EMBEDDED_MODELS["tiny-cogvideox"].defaults()
    # Without the embedded record, defaults come from the transformer's sample size and the pipeline's signature.
    assert {k: pipeline_defaults(loaded)[k] for k in ("num_frames", "height", "width")} == {
        k: defaults[k] for k in ("num_frames", "height", "width")
    }
    a = VideoGenerator(load_pipeline("tiny-cogvideox")).generate(_params()).frames
    b = VideoGenerator(loaded).generate(_params()).frames
    assert a.shape == b.shape == (9, 16, 16, 3)
    assert np.abs(a.astype(int) - b).max() <= 1  # same weights; mmap-loaded tensors may differ in the last float bit


def test_load_pipeline_unknown_model_names_the_embedded_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="tiny-latte"):
        load_pipeline(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        load_pipeline("tiny-latte", dtype="float8")


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field,value",
    [
        ("prompt", ""),
        ("prompt", 3),
        ("negative_prompt", None),
        ("num_frames", 0),
        ("num_frames", 2.5),
        ("height", -16),
        ("width", True),
        ("num_inference_steps", 0),
        ("num_inference_steps", 1001),
        ("guidance_scale", float("nan")),
        ("guidance_scale", -1.0),
        ("seed", -1),
        ("seed", 2**63),
        ("fps", 0),
    ],
)
def test_params_errors_name_the_field(field, value):
    with pytest.raises(GenerationParamsError, match=f"^{field}: ") as info:
        _params(**{field: value})
    assert info.value.field == field


def test_params_from_dict_rejects_unknown_and_missing_fields():
    assert GenerationParams.from_dict({"prompt": "a cat", "seed": 3}).seed == 3
    with pytest.raises(GenerationParamsError, match="^sede: unknown") as info:
        GenerationParams.from_dict({"prompt": "a cat", "sede": 3})
    assert info.value.field == "sede"
    with pytest.raises(GenerationParamsError, match="^prompt: is required"):
        GenerationParams.from_dict({"seed": 3})


@pytest.mark.parametrize(
    "name,overrides,field,match",
    [
        ("tiny-latte", {"num_frames": 9}, "num_frames", "must be 8"),
        ("tiny-latte", {"height": 18}, "height", "multiple of 8 .*pipeline takes multiples of 8"),
        ("tiny-latte", {"height": 20}, "height", "multiple of 8"),  # the latents take 20 (VAE 2 x patch 2): Latte's check does not
        ("tiny-cogvideox", {"num_frames": 8}, "num_frames", r"4k\+1.*try 9"),
        ("tiny-cogvideox", {"width": 20}, "width", "multiple of 8"),
        ("tiny-cogvideox", {"num_frames": 13}, "num_frames", r"8k\+1 .*decodes 2 latent frames at a time.*try 17"),
        ("tiny-wan", {"num_frames": 10}, "num_frames", r"4k\+1"),
        ("tiny-wan", {"height": 12}, "height", "multiple of 16.*try 16"),
        ("tiny-wan", {"height": 24}, "height", "multiple of 16 .*VAE x4 x patch 2, and the pipeline takes multiples of 16"),
        ("tiny-wan", {"width": 272}, "width", "rotary table holds 32"),
        ("tiny-wan-i2v", {"height": 40}, "height", "multiple of 16"),
        ("tiny-hunyuan", {"height": 24}, "height", "multiple of 16"),
        ("tiny-mochi", {"num_frames": 9}, "num_frames", r"6k\+1.*try 7"),
        ("tiny-ltx", {"height": 48}, "height", "multiple of 32 .*VAE x4 x patch 1, and the pipeline takes multiples of 32"),
        ("tiny-ltx-i2v", {"width": 16}, "width", "multiple of 32.*try 32"),
        ("tiny-allegro", {"width": 112}, "width", "whole tiles only .*14 latents do not fit; try 128"),
        ("tiny-allegro", {"num_frames": 25}, "num_frames", "whole tiles only .*7 latents do not fit; try 21"),
    ],
)
def test_validate_params_rejects_shapes_the_model_cannot_take(name, overrides, field, match):
    pipe = EMBEDDED_MODELS[name].build()
    defaults = EMBEDDED_MODELS[name].defaults()
    validate_params(pipe, _params(**defaults))  # the defaults themselves are fine
    with pytest.raises(GenerationParamsError, match=match) as info:
        validate_params(pipe, _params(**{**defaults, **overrides}))
    assert info.value.field == field


def test_generator_resolve_fills_defaults_and_draws_a_seed():
    gen = VideoGenerator(tiny_latte_pipeline(), defaults=EMBEDDED_MODELS["tiny-latte"].defaults())
    resolved = gen.resolve(GenerationParams(prompt=PROMPT))
    assert resolved.num_frames == 8 and resolved.height == 32 and resolved.fps == 8
    assert resolved.seed is not None and 0 <= resolved.seed < 2**63
    with pytest.raises(GenerationParamsError) as info:
        gen.resolve(GenerationParams(prompt=PROMPT, num_frames=4))
    assert info.value.field == "num_frames"


@pytest.mark.parametrize("name,text_len", [("tiny-latte", None), ("tiny-cogvideox", 16), ("tiny-wan", 32)])
def test_call_kwargs_speak_each_pipelines_dialect(name, text_len):
    kwargs = generator_module._call_kwargs(BUILDERS[name](), [_params(num_frames=8)])
    assert kwargs.get("max_sequence_length") == text_len  # CogVideoX: its text positions; Wan: the tokenizer's limit
    assert kwargs["video_length" if name == "tiny-latte" else "num_frames"] == 8
    assert kwargs["output_type"] == "np"


def test_to_uint8_rounds_and_clips():
    out = to_uint8(np.array([-0.5, 0.0, 0.5 / 255, 0.5, 1.0, 2.0]))
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 0, 128, 255, 255]  # round-half-even at 0.5


# ------------------------------------------------------------------------------------------------- generation


NON_SQUARE = {"tiny-ltx": (32, 64), "tiny-ltx-i2v": (32, 64), "tiny-allegro": (128, 128)}  # LTX: multiples of 32; Allegro: one 128 px tile


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_generate_returns_requested_shape_seeded_frames_and_timings(name):
    gen = VideoGenerator(load_pipeline(name))
    frames = EMBEDDED_MODELS[name].num_frames
    height, width = NON_SQUARE.get(name, (32, 16))
    if gen.image_to_video:  # the same checks on a request that carries its reference image
        image = ReferenceImage.from_rgb(np.full((height, width, 3), 128, dtype=np.uint8))
        _params = lambda **kw: GenerationRequest(**_plain_params(**kw).to_dict(), input_reference=image)  # noqa: E731
    else:
        _params = _plain_params
    first = gen.generate(_params(seed=11, height=height, width=width))
    assert first.frames.shape == (frames, height, width, 3) and first.frames.dtype == np.uint8
    assert first.params.num_frames == frames and first.params.seed == 11
    timings = first.stats.timings.to_api()
    assert set(timings) == {"denoise_s", "decode_s", "generate_s", "share_s"}  # one meaning each (StageTimings)
    assert min(timings.values()) >= 0
    assert timings["generate_s"] == pytest.approx(timings["denoise_s"] + timings["decode_s"])
    assert timings["share_s"] == timings["generate_s"] and first.stats.batch_size == 1  # alone: the whole call
    again = gen.generate(_params(seed=11, height=height, width=width))
    other = gen.generate(_params(seed=12, height=height, width=width))
    assert np.array_equal(first.frames, again.frames)
    assert np.abs(first.frames.astype(int) - other.frames).mean() > 1.0


def test_a_drawn_seed_reproduces_the_video():
    gen = VideoGenerator(tiny_wan_pipeline())
    drawn = gen.generate(_params(seed=None))
    replay = gen.generate(drawn.params)
    assert np.array_equal(drawn.frames, replay.frames)


def test_on_step_is_called_once_per_step_in_order():
    gen = VideoGenerator(tiny_cogvideox_pipeline())
    calls: list[tuple[int, int]] = []
    gen.generate(_params(num_inference_steps=5), on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(5)]


def test_raising_from_on_step_aborts_and_the_generator_stays_usable():
    gen = VideoGenerator(tiny_latte_pipeline(), "PAB-246")

    def cancel(step: int, total: int) -> None:
        if step == 1:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        gen.generate(_params(num_inference_steps=10), on_step=cancel)
    clean = VideoGenerator(tiny_latte_pipeline(), "PAB-246").generate(_params(num_inference_steps=10))
    after = gen.generate(_params(num_inference_steps=10))
    assert np.array_equal(after.frames, clean.frames)
    assert after.stats.pab == clean.stats.pab


# ------------------------------------------------------------------------------------------------------- PAB


def _pab(result) -> dict:
    """The PAB counts of a result as the API shows them (`PABCounts` JSON, the shape of `PABStats.to_dict()`)."""
    return result.stats.pab.model_dump()


def _consistent(stats: dict) -> None:
    for kind, counts in stats["kinds"].items():
        assert counts["calls"] == counts["computed"] + counts["broadcast"], kind


# Per family (calls, broadcasts per kind and pass, forwards, preset): test_models.py, PABPipelineTesterMixin.


def test_preset_none_matches_a_plain_pipeline_call_bit_for_bit():
    plain_pipe = tiny_latte_pipeline()
    params = _params(num_inference_steps=6)
    plain = plain_pipe(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        video_length=8,
        height=16,
        width=16,
        num_inference_steps=6,
        guidance_scale=7.5,
        clean_caption=False,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    result = VideoGenerator(tiny_latte_pipeline(), "none").generate(params)
    assert np.array_equal(result.frames, to_uint8(plain))
    _consistent(_pab(result))
    assert _pab(result)["attention"]["broadcast"] == 0
    assert _pab(result)["attention"]["calls"] == 6 * 2 * 3  # steps x layers x (spatial, temporal, cross)


def test_pab_changes_frames_a_little_and_per_request_override_does_not_stick():
    gen = VideoGenerator(tiny_latte_pipeline())  # default: "none"
    params = _params(num_inference_steps=10)
    base = gen.generate(params)
    fast = gen.generate(params, pab="PAB-579")
    as_dict = gen.generate(params, pab=get_preset("PAB-579", "latte").to_dict())
    back = gen.generate(params)
    assert _pab(base)["attention"]["broadcast"] == 0 and _pab(back)["attention"]["broadcast"] == 0
    assert _pab(fast)["attention"]["broadcast"] > 0 and _pab(fast)["preset"] == "PAB-579"
    assert not np.array_equal(fast.frames, base.frames)
    assert np.array_equal(fast.frames, as_dict.frames)
    assert np.array_equal(base.frames, back.frames)
    assert fast.pab == get_preset("PAB-579", "latte").to_dict()


def test_bad_pab_settings_are_rejected():
    with pytest.raises(PABConfigError, match="unknown preset"):
        VideoGenerator(tiny_latte_pipeline(), "PAB-999")
    gen = VideoGenerator(tiny_latte_pipeline())
    with pytest.raises(PABConfigError, match="unknown PAB config field"):
        gen.generate(_params(), pab={"spatail": {"range": 2}})


def test_model_without_adapter_runs_unhooked(monkeypatch):
    def no_adapter(transformer):
        raise UnsupportedModelError("no adapter")

    monkeypatch.setattr(generator_module, "adapter_for", no_adapter)
    gen = VideoGenerator(tiny_latte_pipeline())
    assert gen.pab_handle is None
    result = gen.generate(_params())
    assert result.stats.pab is None and result.frames.shape == (8, 16, 16, 3)
    with pytest.raises(UnsupportedModelError):
        VideoGenerator(tiny_latte_pipeline(), "PAB-246")


# -------------------------------------------------------------------------------------------------- parallel


def test_parallel_is_handed_to_pab_parallel(monkeypatch):
    seen = []
    fake = lambda pipe, config: seen.append((pipe, config)) or "applied"  # noqa: E731
    monkeypatch.setattr(generator_module, "apply_parallel", fake)
    pipe = tiny_latte_pipeline()
    gen = VideoGenerator(pipe, parallel={"sp_degree": 2})
    assert seen == [(pipe, {"sp_degree": 2})] and gen.parallel == "applied"
