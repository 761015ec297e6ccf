"""ParallelConfig validation and the per-scheme shape rules (no processes needed)."""

from __future__ import annotations

import pytest
from diffusers.models.attention_processor import Attention

from pab.runtime.models import tiny as testing
from pab.parallel import ParallelConfig, ParallelConfigError, check_latents
from pab.parallel.attention import UlyssesAttnProcessor


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


def test_two_expert_wan_is_rejected_before_any_group_is_built() -> None:
    from pab.parallel import apply_parallel

    pipe = testing.tiny_wan_pipeline(0)
    pipe.register_modules(transformer_2=testing.tiny_wan_transformer(1))
    with pytest.raises(ParallelConfigError, match="transformer_2"):
        apply_parallel(pipe, ParallelConfig(sp_degree=2))
