"""The tiny pipelines: real diffusers classes, offline, deterministic, fast, and round-trippable through disk."""

from __future__ import annotations

import inspect

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import (
    AllegroPipeline,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    HunyuanVideoPipeline,
    LattePipeline,
    LTXImageToVideoPipeline,
    LTXPipeline,
    MochiPipeline,
    WanImageToVideoPipeline,
    WanPipeline,
)
from PIL import Image
from transformers import UMT5EncoderModel

from pab.adapters import adapter_for, pipeline_transformers
from pab.config import TIMESTEP_SCALE
from pab.runtime.models.registry import RANDOM_MODELS as EMBEDDED_MODELS
from pab.runtime.models.tiny import (
    LATTE_FRAMES,
    TEXT_TOKENS,
    VOCABULARY,
    WAN_I2V_TEXT_TOKENS,
    tiny_allegro_transformer,
    tiny_cogvideox_transformer,
    tiny_hunyuan_transformer,
    tiny_latte_transformer,
    tiny_ltx_transformer,
    tiny_mochi_transformer,
    tiny_tokenizer,
    tiny_wan_transformer,
)
from pab.runtime.pipelines import GenerationParams, load_pipeline, validate_params

CLASSES = {"tiny-latte": LattePipeline, "tiny-cogvideox": CogVideoXPipeline, "tiny-wan": WanPipeline,
           "tiny-wan22": WanPipeline, "tiny-hunyuan": HunyuanVideoPipeline, "tiny-allegro": AllegroPipeline,
           "tiny-mochi": MochiPipeline, "tiny-ltx": LTXPipeline, "tiny-wan-i2v": WanImageToVideoPipeline,
           "tiny-cogvideox-i2v": CogVideoXImageToVideoPipeline, "tiny-ltx-i2v": LTXImageToVideoPipeline}
TRANSFORMERS = {"tiny-latte": tiny_latte_transformer, "tiny-cogvideox": tiny_cogvideox_transformer,
                "tiny-wan": tiny_wan_transformer, "tiny-hunyuan": tiny_hunyuan_transformer,
                "tiny-allegro": tiny_allegro_transformer, "tiny-mochi": tiny_mochi_transformer,
                "tiny-ltx": tiny_ltx_transformer}
# Besides its default: half of it, but LTXPipeline takes multiples of 32 only and Allegro's VAE decodes 128 px
# tiles only (tiny.ALLEGRO_SIZE; a larger size decodes many tiles and costs seconds).
OTHER_SIZE = {"tiny-ltx": 64, "tiny-ltx-i2v": 64, "tiny-allegro": None}
SIZES = [(name, size) for name, entry in sorted(EMBEDDED_MODELS.items())
         for size in (entry.height, OTHER_SIZE.get(name, entry.height // 2)) if size]


def _run(pipe, name: str, size: int, seed: int = 0, steps: int = 2):
    entry = EMBEDDED_MODELS[name]
    frame_key = "video_length" if isinstance(pipe, LattePipeline) else "num_frames"
    extra = {"clean_caption": False} if isinstance(pipe, (LattePipeline, AllegroPipeline)) else {}
    if not isinstance(pipe, LattePipeline):
        # Wan 2.1 I2V's processor assumes its tokenizer's 512 text tokens
        extra["max_sequence_length"] = 512 if isinstance(pipe, WanImageToVideoPipeline) else 16
    if "image" in inspect.signature(pipe.__call__).parameters:  # image-to-video: a reference of the output size
        extra["image"] = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))
    return pipe(
        prompt="a red car drives fast",
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
        **{frame_key: entry.num_frames},
        **extra,
        **entry.call_kwargs,
    ).frames[0]


@pytest.mark.parametrize("name,size", SIZES)
def test_generates_requested_frames_and_size(name, size):
    entry = EMBEDDED_MODELS[name]
    pipe = entry.build()
    assert type(pipe) is CLASSES[name]
    video = _run(pipe, name, size)
    assert video.shape == (entry.num_frames, size, size, 3)
    assert 0.0 <= video.min() and video.max() <= 1.0
    assert video.std() > 0.01  # not a constant image


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_defaults_are_a_size_the_pipeline_takes(name):
    entry = EMBEDDED_MODELS[name]
    validate_params(entry.build(), GenerationParams(prompt="a cat", **entry.defaults()))


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_builders_are_deterministic_and_leave_global_rng_alone(name):
    build = EMBEDDED_MODELS[name].build
    rng_before = torch.get_rng_state()
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    assert torch.equal(rng_before, torch.get_rng_state())
    sa, sb, sc = (p.transformer.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    va, vb = (p.vae.state_dict() for p in (a, b))
    assert all(torch.equal(va[k], vb[k]) for k in va)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_bare_transformers_match_pipeline_transformers_and_heads_split_by_4(name):
    model = TRANSFORMERS[name](seed=5)
    assert model.config.num_attention_heads % 4 == 0
    in_pipe = EMBEDDED_MODELS[name].build(seed=5).transformer.state_dict()
    assert in_pipe.keys() == model.state_dict().keys()
    assert all(torch.equal(v, in_pipe[k]) for k, v in model.state_dict().items())


def test_wan22_has_two_different_experts_and_a_boundary():
    pipe = EMBEDDED_MODELS["tiny-wan22"].build(seed=5)
    assert [attr for attr, _ in pipeline_transformers(pipe)] == ["transformer", "transformer_2"]
    assert pipe.config.boundary_ratio == 0.875
    first, second = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert first.keys() == second.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(v, first[k]) for k, v in tiny_wan_transformer(seed=5).state_dict().items())


def test_transformer_builders_take_config_overrides():
    model = tiny_latte_transformer(num_layers=1, num_attention_heads=8, attention_head_dim=4, sample_size=8)
    assert (model.config.num_layers, model.config.num_attention_heads, model.config.sample_size) == (1, 8, 8)
    assert len(model.transformer_blocks) == 1
    assert tiny_wan_transformer(rope_max_seq_len=64).config.rope_max_seq_len == 64


def test_latte_video_length_is_its_default_frame_count():
    assert tiny_latte_transformer().config.video_length == LATTE_FRAMES == EMBEDDED_MODELS["tiny-latte"].num_frames


def test_wan_uses_umt5_and_temporal_defaults_are_4k_plus_1():
    assert isinstance(EMBEDDED_MODELS["tiny-wan"].build().text_encoder, UMT5EncoderModel)
    for name in ("tiny-cogvideox", "tiny-wan"):
        assert (EMBEDDED_MODELS[name].num_frames - 1) % 4 == 0


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_schedulers_span_the_0_to_1000_timestep_scale(name):
    """The noise levels every transformer sees in a 10-step run (Mochi's rising timesteps read as 1000 - t)."""
    entry = EMBEDDED_MODELS[name]
    pipe = entry.build()
    seen: list[float] = []
    for _, transformer in pipeline_transformers(pipe):
        reversed_ = adapter_for(transformer).timestep_reversed
        transformer.register_forward_pre_hook(lambda m, a, k, r=reversed_: seen.append(
            (TIMESTEP_SCALE - float(k["timestep"].max())) if r else float(k["timestep"].max())), with_kwargs=True)
    _run(pipe, name, entry.height, steps=10)
    # the first steps lie above PAB's windows, later ones inside windows such as (100, 800) (HunyuanVideo's shift 7
    # and Mochi's linear-quadratic schedule stay high for long: their 10-step runs end near 440 and 350)
    assert max(seen) > 900 and min(seen) < 500


def test_tokenizer_maps_vocabulary_words_to_distinct_ids():
    tok = tiny_tokenizer()
    ids = tok("a cat runs in the park").input_ids
    assert ids[-1] == tok.eos_token_id
    assert len(set(ids[:-1])) == 6 and tok.unk_token_id not in ids
    assert tok("zyzzyva").input_ids[0] == tok.unk_token_id
    assert len(tok) == len(VOCABULARY) + 3


def test_defaults_table_has_generation_fields():
    for entry in EMBEDDED_MODELS.values():
        assert set(entry.defaults()) == {"num_frames", "height", "width", "num_inference_steps", "guidance_scale", "fps"}


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_save_and_reload_offline_gives_identical_output(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    entry = EMBEDDED_MODELS[name]
    pipe = entry.build(seed=1)
    pipe.save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path))  # from_pretrained, plus what serving needs (Allegro's tiled decode)
    assert type(loaded) is type(pipe)
    assert type(loaded.text_encoder) is type(pipe.text_encoder)
    assert loaded.tokenizer.model_max_length == pipe.tokenizer.model_max_length
    assert pipe.tokenizer.model_max_length == (WAN_I2V_TEXT_TOKENS if name == "tiny-wan-i2v" else TEXT_TOKENS)
    components = [c for c in ("text_encoder", "text_encoder_2", "image_encoder", "vae", "transformer", "transformer_2")
                  if getattr(pipe, c, None) is not None]
    for component in components:
        saved, reloaded = getattr(pipe, component).state_dict(), getattr(loaded, component).state_dict()
        assert saved.keys() == reloaded.keys()
        assert all(torch.equal(saved[k], reloaded[k]) for k in saved)
    assert getattr(loaded.config, "boundary_ratio", None) == getattr(pipe.config, "boundary_ratio", None)
    a = _run(pipe, name, entry.height, seed=7)
    b = _run(loaded, name, entry.height, seed=7)
    # Bit-equal weights; outputs may differ in the last float bits because mmap-loaded tensors take other kernels.
    assert abs(a - b).max() < 1e-5



def test_family_table_names_each_embedded_models_transformer():
    """`pab.runtime.models.families` knows each model's transformer without loading it: the loaded one's."""
    from pab.runtime.models.families import EMBEDDED_TRANSFORMERS
    from pab.runtime.models.registry import EMBEDDED_MODELS as ALL_EMBEDDED

    assert set(EMBEDDED_TRANSFORMERS) == set(ALL_EMBEDDED)
    for name in ALL_EMBEDDED:
        assert type(load_pipeline(name).transformer).__name__ == EMBEDDED_TRANSFORMERS[name], name
