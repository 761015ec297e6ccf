"""Tiny random-weight video pipelines, built offline from the real diffusers classes.

They exist so that every layer (PAB hooks, sequence parallel, Ray deployments, the HTTP API) can run a real
Latte / CogVideoX / Wan pipeline end to end on a CPU in well under a second, with no hub access. Each builder is
deterministic in its `seed` and leaves the global torch RNG untouched. Head counts are divisible by 4 so that
Ulysses sequence parallel can split heads over up to 4 ranks; Latte's temporal position table is sized by its
default frame count (`video_length`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    DiffusionPipeline,
    LattePipeline,
    LatteTransformer3DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

TEXT_DIM = 32
"""Width of the tiny T5 encoder's output, and hence every tiny transformer's caption/text input."""

TEXT_TOKENS = 32
"""Longest prompt, in tokens, the tiny tokenizer declares (its `model_max_length`)."""

NUM_HEADS = 4
HEAD_DIM = 8

LATTE_FRAMES = 8
"""Latte adds a temporal position table of exactly this many frames: it is the only frame count it accepts."""

# A small closed vocabulary so prompts tokenize into distinct ids (unknown words map to <unk>).
VOCABULARY: tuple[str, ...] = tuple(
    "a an the of in on at with and to from by over under through into near".split()
    + "cat dog bird fish horse person child people car train boat plane robot dragon".split()
    + "runs walks jumps flies swims drives rides dances falls spins moves waves smiles".split()
    + "park beach ocean river lake forest mountain city street sky cloud snow rain sun moon".split()
    + "sunset sunrise night day fire water light shadow tree flower grass field road bridge".split()
    + "red blue green yellow white black golden bright dark small big slow fast slowly quickly".split()
    + "video scene camera close up wide shot aerial view cinematic realistic cartoon style".split()
)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Initialise weights from `seed` without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def tiny_tokenizer() -> T5Tokenizer:
    """
    A T5 (Unigram) tokenizer over `VOCABULARY`; built in code, saves and reloads like a real one. Its
    `model_max_length` caps the text length pipelines pad to (`pab.runtime.pipelines` reads it), keeping Wan's cross-attention
    at 32 tokens instead of 512.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{word}", -1.0 - 0.01 * i) for i, word in enumerate(VOCABULARY)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=TEXT_TOKENS)


def _t5_kwargs() -> dict[str, Any]:
    return dict(
        vocab_size=len(VOCABULARY) + 3,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
    )


def tiny_t5_encoder(seed: int = 0) -> T5EncoderModel:
    """The text encoder Latte and CogVideoX use (T5), at d_model=32."""
    with _seeded(seed):
        return T5EncoderModel(T5Config(**_t5_kwargs())).eval()


def tiny_umt5_encoder(seed: int = 0) -> UMT5EncoderModel:
    """The text encoder Wan uses (UMT5), at d_model=32."""
    with _seeded(seed):
        return UMT5EncoderModel(UMT5Config(**_t5_kwargs())).eval()


def _build(cls: type[torch.nn.Module], seed: int, config: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Instantiate `cls(**config | overrides)` with weights drawn from `seed`, in eval mode."""
    with _seeded(seed):
        return cls(**{**config, **overrides}).eval()


def tiny_latte_transformer(
    seed: int = 0, *, num_layers: int = 2, video_length: int = LATTE_FRAMES, **overrides: Any
) -> LatteTransformer3DModel:
    """Latte: spatial + temporal blocks, learned sigma (out = 2 x in channels), like maxin-cn/Latte-1."""
    config = dict(
        num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        cross_attention_dim=NUM_HEADS * HEAD_DIM,
        sample_size=16,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=TEXT_DIM,
        video_length=video_length,
    )
    return _build(LatteTransformer3DModel, seed, config, overrides)


def tiny_cogvideox_transformer(seed: int = 0, *, num_layers: int = 2, **overrides: Any) -> CogVideoXTransformer3DModel:
    """CogVideoX 1.0: full 3D attention over text + video tokens, sincos positions (recomputed for other sizes)."""
    config = dict(
        num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=TEXT_DIM,
        num_layers=num_layers,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    )
    return _build(CogVideoXTransformer3DModel, seed, config, overrides)


def tiny_wan_transformer(seed: int = 0, *, num_layers: int = 2, **overrides: Any) -> WanTransformer3DModel:
    """Wan 2.1: self-attention over video tokens with RoPE, separate text cross-attention."""
    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return _build(WanTransformer3DModel, seed, config, overrides)


def _assemble(cls: type[DiffusionPipeline], text_encoder: torch.nn.Module, vae: torch.nn.Module,
              transformer: torch.nn.Module, scheduler: Any) -> Any:
    pipeline = cls(tokenizer=tiny_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                   scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_latte_pipeline(seed: int = 0, *, num_layers: int = 2) -> LattePipeline:
    """LattePipeline: 2x spatial VAE (2 blocks), DDIM over 1000 linear-beta timesteps."""
    vae = _build(AutoencoderKL, seed, dict(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    ), {})
    scheduler = DDIMScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False, timestep_spacing="linspace"
    )
    transformer = tiny_latte_transformer(seed, num_layers=num_layers)
    return _assemble(LattePipeline, tiny_t5_encoder(seed), vae, transformer, scheduler)


def tiny_cogvideox_pipeline(seed: int = 0, *, num_layers: int = 2) -> CogVideoXPipeline:
    """CogVideoXPipeline: 4x spatial / 4x temporal causal 3D VAE, CogVideoX-2b's v-prediction DDIM schedule."""
    vae = _build(AutoencoderKLCogVideoX, seed, dict(
        down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        sample_height=32,
        sample_width=32,
    ), {})
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )
    transformer = tiny_cogvideox_transformer(seed, num_layers=num_layers)
    return _assemble(CogVideoXPipeline, tiny_t5_encoder(seed), vae, transformer, scheduler)


def tiny_wan_pipeline(seed: int = 0, *, num_layers: int = 2) -> WanPipeline:
    """WanPipeline: UMT5 text encoder, 4x spatial / 4x temporal Wan VAE, UniPC flow-matching as Wan 2.1 ships."""
    vae = _build(AutoencoderKLWan, seed, dict(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
        scale_factor_spatial=4,
        scale_factor_temporal=4,
    ), {})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    transformer = tiny_wan_transformer(seed, num_layers=num_layers)
    return _assemble(WanPipeline, tiny_umt5_encoder(seed), vae, transformer, scheduler)
