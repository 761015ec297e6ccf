"""ParallelConfig validation and the per-scheme shape rules (no processes needed)."""

from __future__ import annotations

import pytest
from diffusers.models.attention_processor import Attention

from pab.config import BroadcastRule, PABConfig
from pab.parallel import ParallelConfig, ParallelConfigError, apply_parallel, check_latents
from pab.parallel.attention import UlyssesAttnProcessor
from pab.parallel.layout import request_latent_shape
from pab.parallel.schedule import ForwardComm, predict_stats
from pab.runtime.models import tiny as testing


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"sp_degree": 0}, "sp_degree"),
        ({"sp_degree": True}, "sp_degree"),
        ({"sp_degree": 2.0}, "sp_degree"),
        ({"cfg_degree": 3}, "cfg_degree"),
        ({"strategy": "ring"}, "strategy"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field) -> None:
    with pytest.raises(ParallelConfigError) as info:
        ParallelConfig(**kwargs)
    assert info.value.field == field and field in str(info.value)


def test_config_round_trip_and_strategy() -> None:
    config = ParallelConfig(sp_degree=2, cfg_degree=2, strategy="auto", timeout_s=30)
    assert ParallelConfig.from_dict(config.to_dict()) == config
    assert config.world_size == 4
    assert config.resolve_strategy("dsp") == "dsp" and config.resolve_strategy("ulysses") == "ulysses"
    assert ParallelConfig(strategy="ulysses").resolve_strategy("dsp") == "ulysses"
    with pytest.raises(ParallelConfigError, match="unknown parallel field"):
        ParallelConfig.from_dict({"sp": 2})


def test_latte_frame_rules() -> None:
    latte = testing.tiny_latte_transformer(0)
    check_latents("latte", "dsp", latte, 4, (2, 4, 8, 16, 16))  # 2 frames and 32 tokens per rank: fine
    check_latents("latte", "dsp", latte, 1, (2, 4, 7, 16, 16))  # one rank splits nothing
    with pytest.raises(ParallelConfigError, match="latent frames = 6 is not divisible by sp_degree = 4") as info:
        check_latents("latte", "dsp", latte, 4, (2, 4, 6, 16, 16))
    assert info.value.field == "num_frames"
    with pytest.raises(ParallelConfigError, match="tokens per frame = 9"):
        check_latents("latte", "dsp", latte, 2, (2, 4, 8, 6, 6))
    check_latents("latte", "ulysses", latte, 2, (2, 4, 8, 6, 6))  # Ulysses exchanges heads, not spatial tokens


def test_ulysses_token_rule() -> None:
    wan = testing.tiny_wan_transformer(0)
    check_latents("wan", "ulysses", wan, 4, (2, 4, 3, 8, 8))  # 3 x 16 = 48 tokens
    with pytest.raises(ParallelConfigError, match=r"= 27 is not divisible by sp_degree = 2"):
        check_latents("wan", "ulysses", wan, 2, (2, 4, 3, 6, 6))
    # CogVideoX pads its tokens to a multiple of the ranks instead (the padding is masked in attention).
    check_latents("cogvideox", "ulysses", testing.tiny_cogvideox_transformer(0), 2, (2, 3, 4, 6, 6))


def test_ulysses_rejects_indivisible_heads_and_unsupported_attention() -> None:
    attn = Attention(query_dim=24, heads=3, dim_head=8)
    with pytest.raises(ParallelConfigError, match="3 attention heads are not divisible by sp_degree=2"):
        UlyssesAttnProcessor.check_module(attn, "blocks.0.attn1", 2)
    UlyssesAttnProcessor.check_module(attn, "blocks.0.attn1", 3)
    residual = Attention(query_dim=16, heads=2, dim_head=8, residual_connection=True)
    with pytest.raises(ParallelConfigError, match="residual_connection"):
        UlyssesAttnProcessor.check_module(residual, "x", 2)


@pytest.mark.parametrize(
    "build,config,field,text",
    [
        (testing.tiny_hunyuan_transformer, {"sp_degree": 2}, "sp_degree", "not available for hunyuanvideo"),
        (testing.tiny_allegro_transformer, {"sp_degree": 2}, "sp_degree", "cfg_degree=2 works for it"),
        (testing.tiny_mochi_transformer, {"sp_degree": 4}, "sp_degree", "not available for mochi"),
        (testing.tiny_hunyuan_transformer, {"cfg_degree": 2}, "cfg_degree", "guidance is distilled"),
        (testing.tiny_ltx_transformer, {"sp_degree": 2, "strategy": "dsp"}, "strategy", "ltx-video has full 3D"),
    ],
    ids=["hunyuan-sp", "allegro-sp", "mochi-sp", "hunyuan-cfg", "ltx-dsp"],
)
def test_unsupported_splits_are_refused_before_any_group_is_built(build, config, field, text) -> None:
    """No process group exists in this process: reaching group construction would fail differently."""
    transformer = build(0)
    with pytest.raises(ParallelConfigError, match=text) as info:
        apply_parallel(transformer, ParallelConfig(**config))
    assert info.value.field == field
    assert "sp_degree=1" in str(info.value) or field != "sp_degree"  # says what to run instead
    assert not hasattr(transformer, "_pab_parallel")


def test_ltx_video_token_rule_and_request_shape() -> None:
    ltx = testing.tiny_ltx_transformer(0)
    check_latents("ltx-video", "ulysses", ltx, 4, (2, 48, 8))  # [B, tokens, C]: 48 tokens over 4 ranks
    with pytest.raises(ParallelConfigError, match="= 27 is not divisible by sp_degree = 2") as info:
        check_latents("ltx-video", "ulysses", ltx, 2, (2, 27, 8))
    assert info.value.field == "num_frames"
    pipe = testing.tiny_ltx_pipeline(0)  # 4x spatial, 4x temporal VAE, patch 1: 9 frames of 32 px -> 3 x 8 x 8
    assert request_latent_shape("ltx-video", pipe, ltx, 9, 32, 32) == (1, 192, 8)
    wan = testing.tiny_wan_transformer(0)
    assert request_latent_shape("wan", testing.tiny_wan_pipeline(0), wan, 9, 32, 32) == (1, 4, 3, 8, 8)


def test_schedule_counts_each_experts_steps_from_zero() -> None:
    """Wan 2.2: the low-noise expert's modules start their own counters at the boundary."""
    comm = ForwardComm(per_module={"spatial": [("all_to_all", 10)]}, modules={"spatial": 1})
    pab = PABConfig(spatial=BroadcastRule(3, (0, 1000)))
    timesteps = [999.0, 950.0, 900.0, 850.0, 800.0]
    one_counter = predict_stats(comm, timesteps, pab)
    two_experts = predict_stats(comm, timesteps, pab, boundary=975.0)  # expert 1: 999; expert 2: the other four
    assert (one_counter.calls_skipped(), one_counter.calls_issued()) == (3, 2)  # counters 0..4 skip 1, 2, 4
    assert (two_experts.calls_skipped(), two_experts.calls_issued()) == (2, 3)  # 0 | 0, 1, 2, 3 skip 1, 2
    assert two_experts.bytes_skipped() == 20
