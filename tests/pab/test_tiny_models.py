"""The tiny pipelines: real diffusers classes, offline, deterministic, fast, and round-trippable through disk."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
from diffusers import CogVideoXPipeline, DiffusionPipeline, LattePipeline, WanPipeline
from transformers import UMT5EncoderModel

from pab.runtime.models.registry import RANDOM_MODELS as EMBEDDED_MODELS
from pab.runtime.models.tiny import (
    LATTE_FRAMES,
    TEXT_TOKENS,
    VOCABULARY,
    tiny_cogvideox_transformer,
    tiny_latte_transformer,
    tiny_tokenizer,
    tiny_wan_transformer,
)

CLASSES = {"tiny-latte": LattePipeline, "tiny-cogvideox": CogVideoXPipeline, "tiny-wan": WanPipeline}


def _run(pipe, frames: int, size: int, seed: int = 0, steps: int = 2):
    frame_key = "video_length" if isinstance(pipe, LattePipeline) else "num_frames"
    extra = {"clean_caption": False} if isinstance(pipe, LattePipeline) else {"max_sequence_length": 16}
    return pipe(
        "a red car drives fast",
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
        **{frame_key: frames},
        **extra,
    ).frames[0]


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
@pytest.mark.parametrize("size", [16, 32])
def test_generates_requested_frames_and_size(name, size):
    entry = EMBEDDED_MODELS[name]
    pipe = entry.build()
    assert type(pipe) is CLASSES[name]
    video = _run(pipe, entry.num_frames, size)
    assert video.shape == (entry.num_frames, size, size, 3)
    assert 0.0 <= video.min() and video.max() <= 1.0
    assert video.std() > 0.01  # not a constant image


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


@pytest.mark.parametrize(
    "build", [tiny_latte_transformer, tiny_cogvideox_transformer, tiny_wan_transformer], ids=["latte", "cogvideox", "wan"]
)
def test_bare_transformers_match_pipeline_transformers_and_heads_split_by_4(build):
    model = build(seed=5)
    assert model.config.num_attention_heads % 4 == 0
    name = {"latte": "tiny-latte", "cogvideox": "tiny-cogvideox", "wan": "tiny-wan"}[build.__name__.split("_")[1]]
    in_pipe = EMBEDDED_MODELS[name].build(seed=5).transformer.state_dict()
    assert all(torch.equal(v, in_pipe[k]) for k, v in model.state_dict().items())


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
    scheduler = EMBEDDED_MODELS[name].build().scheduler
    scheduler.set_timesteps(10)
    steps = scheduler.timesteps.float()
    assert steps.max() > 900 and steps.min() < 300  # PAB windows such as (100, 800) fall inside the run


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
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is type(pipe)
    assert type(loaded.text_encoder) is type(pipe.text_encoder)
    assert loaded.tokenizer.model_max_length == TEXT_TOKENS
    loaded.set_progress_bar_config(disable=True)
    for component in ("text_encoder", "vae", "transformer"):
        saved, reloaded = getattr(pipe, component).state_dict(), getattr(loaded, component).state_dict()
        assert saved.keys() == reloaded.keys()
        assert all(torch.equal(saved[k], reloaded[k]) for k in saved)
    a = _run(pipe, entry.num_frames, 16, seed=7)
    b = _run(loaded, entry.num_frames, 16, seed=7)
    # Bit-equal weights; outputs may differ in the last float bits because mmap-loaded tensors take other kernels.
    assert abs(a - b).max() < 1e-5
