"""Tiny random-weight video pipelines, built offline from the real diffusers classes.

They exist so that every layer (PAB hooks, sequence parallel, Ray deployments, the HTTP API) can run a real
Latte / CogVideoX / Wan (2.1 and the 2.2 two-expert) / HunyuanVideo / Allegro / Mochi / LTX-Video pipeline end to end
on a CPU in well under a second, with no hub access. Each builder is deterministic in its `seed` and leaves the
global torch RNG untouched. Every transformer has 4 heads of 8 channels, so Ulysses sequence parallel can split
heads over up to 4 ranks and every text input is 32 wide; Latte's temporal position table is sized by its default
frame count (`video_length`). Configs follow diffusers' own fast tests, sized down where those are larger.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from pab.runtime.models.compat import ensure_prompt_cleaning

ensure_prompt_cleaning()  # first: it imports WanImageToVideoPipeline's module quietly (see compat)

from diffusers import (
    AllegroPipeline,
    AllegroTransformer3DModel,
    AutoencoderKL,
    AutoencoderKLAllegro,
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLMochi,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LattePipeline,
    LatteTransformer3DModel,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    MochiPipeline,
    MochiTransformer3DModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaModel,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)


TEXT_DIM = 32
"""Width of the tiny T5 encoder's output, and hence every tiny transformer's caption/text input."""

TEXT_TOKENS = 32
"""Longest prompt, in tokens, the tiny tokenizer declares (its `model_max_length`)."""

NUM_HEADS = 4
HEAD_DIM = 8

LATTE_FRAMES = 8
"""Latte adds a temporal position table of exactly this many frames: it is the only frame count it accepts."""

ALLEGRO_FRAMES = 21
ALLEGRO_SIZE = 128
"""Allegro's VAE decodes only in tiles of 24 frames x `sample_size` pixels with fixed overlaps (8 frames, 120 x 80
pixels): 21 frames (6 latent) of 128 x 128 is the smallest video it decodes in one tile."""

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


def tiny_tokenizer(max_length: int = TEXT_TOKENS) -> T5Tokenizer:
    """
    A T5 (Unigram) tokenizer over `VOCABULARY`; built in code, saves and reloads like a real one. Its
    `model_max_length` caps the text length pipelines pad to (`pab.runtime.pipelines` reads it), keeping Wan's cross-attention
    at 32 tokens instead of 512.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"\u2581{word}", -1.0 - 0.01 * i) for i, word in enumerate(VOCABULARY)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


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


def tiny_llama_encoder(seed: int = 0) -> LlamaModel:
    """HunyuanVideo's main text encoder (a Llama; the pipeline reads its third-to-last hidden state), at width 32."""
    config = LlamaConfig(vocab_size=len(VOCABULARY) + 3, hidden_size=TEXT_DIM, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, pad_token_id=0, bos_token_id=None,
                         eos_token_id=1, max_position_embeddings=64)
    with _seeded(seed):
        return LlamaModel(config).eval()


def tiny_clip_encoder(seed: int = 0) -> CLIPTextModel:
    """HunyuanVideo's pooled text encoder (CLIP); it pools at the tokenizer's end-of-text id (1, `</s>`)."""
    config = CLIPTextConfig(vocab_size=len(VOCABULARY) + 3, hidden_size=TEXT_DIM, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            pad_token_id=0, bos_token_id=0, eos_token_id=1, projection_dim=TEXT_DIM)
    with _seeded(seed):
        return CLIPTextModel(config).eval()


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


def tiny_hunyuan_transformer(seed: int = 0, *, num_layers: int = 2, **overrides: Any) -> HunyuanVideoTransformer3DModel:
    """HunyuanVideo: dual-stream blocks (video and text attend jointly, separate MLPs), then single-stream blocks."""
    config = dict(
        in_channels=4,
        out_channels=4,
        num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM,
        num_layers=num_layers,
        num_single_layers=num_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        rope_axes_dim=(2, 2, 4),
    )
    return _build(HunyuanVideoTransformer3DModel, seed, config, overrides)


def tiny_allegro_transformer(seed: int = 0, *, num_layers: int = 2, **overrides: Any) -> AllegroTransformer3DModel:
    """Allegro: full 3D self-attention over video tokens (3D RoPE from the pipeline), separate text cross-attention.
    Its RoPE splits each head in three even parts (t, h, w), so heads are 12 wide here."""
    config = dict(
        num_attention_heads=NUM_HEADS,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        cross_attention_dim=NUM_HEADS * 12,
        caption_channels=TEXT_DIM,
        sample_height=ALLEGRO_SIZE // 8,
        sample_width=ALLEGRO_SIZE // 8,
        sample_frames=(ALLEGRO_FRAMES - 1) // 4 + 1,
    )
    return _build(AllegroTransformer3DModel, seed, config, overrides)


def tiny_mochi_transformer(seed: int = 0, *, num_layers: int = 2, **overrides: Any) -> MochiTransformer3DModel:
    """Mochi 1: asymmetric joint attention (video and text streams of different widths), reversed timesteps."""
    config = dict(
        patch_size=2,
        num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM,
        num_layers=num_layers,
        pooled_projection_dim=16,
        in_channels=12,
        qk_norm="rms_norm",
        text_embed_dim=TEXT_DIM,
        time_embed_dim=4,
        activation_fn="swiglu",
        max_sequence_length=TEXT_TOKENS,
    )
    return _build(MochiTransformer3DModel, seed, config, overrides)


def tiny_ltx_transformer(seed: int = 0, *, num_layers: int = 2, **overrides: Any) -> LTXVideoTransformer3DModel:
    """LTX-Video: self-attention over patchified tokens ([B, tokens, C], RoPE), separate text cross-attention."""
    config = dict(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=NUM_HEADS,
        attention_head_dim=HEAD_DIM,
        cross_attention_dim=NUM_HEADS * HEAD_DIM,
        num_layers=num_layers,
        caption_channels=TEXT_DIM,
    )
    return _build(LTXVideoTransformer3DModel, seed, config, overrides)


def _assemble(cls: type[DiffusionPipeline], text_encoder: torch.nn.Module, vae: torch.nn.Module,
              transformer: torch.nn.Module, scheduler: Any, **extra: Any) -> Any:
    pipeline = cls(tokenizer=tiny_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                   scheduler=scheduler, **extra)
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


def _four_block_vae(cls: type[torch.nn.Module], seed: int, blocks: str, **config: Any) -> Any:
    """A 3D VAE of four 8-channel `{blocks}DownBlock3D` / `UpBlock3D` stages (8x spatial), 4 latent channels."""
    return _build(cls, seed, dict(down_block_types=(f"{blocks}DownBlock3D",) * 4, up_block_types=(f"{blocks}UpBlock3D",) * 4,
                                  block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1), config)


def tiny_wan22_pipeline(seed: int = 0, *, num_layers: int = 2) -> WanPipeline:
    """Wan 2.2 A14B layout: a high-noise expert (`transformer`, t >= boundary) and a low-noise one (`transformer_2`);
    boundary_ratio 0.875 as the T2V A14B checkpoint ships."""
    pipeline = tiny_wan_pipeline(seed, num_layers=num_layers)
    return _assemble(WanPipeline, pipeline.text_encoder, pipeline.vae, pipeline.transformer, pipeline.scheduler,
                     transformer_2=tiny_wan_transformer(seed + 1, num_layers=num_layers), boundary_ratio=0.875)


def tiny_hunyuan_pipeline(seed: int = 0, *, num_layers: int = 2) -> HunyuanVideoPipeline:
    """HunyuanVideoPipeline: Llama + CLIP text encoders, 8x spatial / 4x temporal causal 3D VAE, flow matching with
    shift 7 as tencent/HunyuanVideo ships; guidance is distilled into the transformer (one forward per step)."""
    vae = _four_block_vae(AutoencoderKLHunyuanVideo, seed, "HunyuanVideo", norm_num_groups=4,
                          spatial_compression_ratio=8, temporal_compression_ratio=4)
    transformer = tiny_hunyuan_transformer(seed, num_layers=num_layers)
    return _assemble(HunyuanVideoPipeline, tiny_llama_encoder(seed), vae, transformer,
                     FlowMatchEulerDiscreteScheduler(shift=7.0),
                     text_encoder_2=tiny_clip_encoder(seed), tokenizer_2=tiny_tokenizer())


HUNYUAN_CALL_KWARGS: dict[str, Any] = {"prompt_template": {"template": "{}", "crop_start": 0}}
"""HunyuanVideo wraps prompts in a Llama-3 chat template and crops its 95 tokens; the tiny tokenizer has no chat
template, so the prompt goes in as written (what diffusers' own fast tests pass)."""


def tiny_allegro_pipeline(seed: int = 0, *, num_layers: int = 2) -> AllegroPipeline:
    """AllegroPipeline: 8x spatial / 4x temporal VAE (tiled decoding only, see `ALLEGRO_SIZE`), DDIM."""
    vae = _four_block_vae(AutoencoderKLAllegro, seed, "Allegro", norm_num_groups=2, temporal_compression_ratio=4,
                          sample_size=ALLEGRO_SIZE)
    vae.enable_tiling()  # diffusers implements Allegro's decode only tiled
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False,
                              timestep_spacing="linspace")
    transformer = tiny_allegro_transformer(seed, num_layers=num_layers)
    return _assemble(AllegroPipeline, tiny_t5_encoder(seed), vae, transformer, scheduler)


def tiny_mochi_pipeline(seed: int = 0, *, num_layers: int = 2) -> MochiPipeline:
    """MochiPipeline: T5, 8x spatial / 6x temporal VAE decoder, flow matching with inverted sigmas as
    genmo/mochi-1-preview ships (the transformer sees timesteps rising from 0 to 1000)."""
    vae = _build(AutoencoderKLMochi, seed, dict(
        latent_channels=12,  # the pipeline hard-codes 12 latent channels (and their mean/std, the real ones)
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),  # its group norms have 32 groups
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        add_attention_block=(False, False, False, False, False),
    ), {})
    scheduler = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    transformer = tiny_mochi_transformer(seed, num_layers=num_layers)
    return _assemble(MochiPipeline, tiny_t5_encoder(seed), vae, transformer, scheduler)


def tiny_ltx_pipeline(seed: int = 0, *, num_layers: int = 2) -> LTXPipeline:
    """LTXPipeline: T5, a 4x spatial / 4x temporal LTX VAE (the real one compresses 32x / 8x), flow matching with
    the resolution-dependent shift Lightricks/LTX-Video ships."""
    vae = _build(AutoencoderKLLTXVideo, seed, dict(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ), {})
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    transformer = tiny_ltx_transformer(seed, num_layers=num_layers)
    return _assemble(LTXPipeline, tiny_t5_encoder(seed), vae, transformer, scheduler)


# ---- image-to-video ------------------------------------------------------------------------------------------------

IMAGE_DIM = 16
"""Width of the tiny CLIP vision encoder's hidden states, Wan 2.1 I2V's image-token input (`image_dim`)."""

WAN_I2V_TEXT_TOKENS = 512
"""Wan 2.1 I2V's attention processor splits image tokens from text by assuming exactly 512 text tokens (diffusers
hard-codes it), so its tokenizer pads to 512 where the text-to-video builds pad to `TEXT_TOKENS`."""


def tiny_clip_vision_encoder(seed: int = 0) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """Wan 2.1 I2V's image encoder (the pipeline reads its second-to-last hidden state) and its processor: 16 x 16
    pixels in 8 x 8 patches, so 5 image tokens (4 patches + class) of width `IMAGE_DIM`."""
    config = CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=32, projection_dim=IMAGE_DIM,
                              num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8)
    # the PIL processor: the default one wants torchvision, and warns and falls back to this one without it
    processor = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    with _seeded(seed):
        return CLIPVisionModel(config).eval(), processor


def tiny_wan_i2v_pipeline(seed: int = 0, *, num_layers: int = 2) -> WanImageToVideoPipeline:
    """WanImageToVideoPipeline (Wan 2.1 I2V layout): the transformer takes the noisy latents, the first-frame mask
    (4 channels, one per frame the VAE folds into a latent one) and the encoded reference video (4) as 12 input
    channels, and attends to CLIP image tokens beside the text in each cross-attention (`add_k_proj`/`add_v_proj`)."""
    base = tiny_wan_pipeline(seed, num_layers=num_layers)
    transformer = tiny_wan_transformer(seed, num_layers=num_layers, in_channels=12, image_dim=IMAGE_DIM,
                                       added_kv_proj_dim=NUM_HEADS * HEAD_DIM)
    image_encoder, image_processor = tiny_clip_vision_encoder(seed)
    pipeline = WanImageToVideoPipeline(tokenizer=tiny_tokenizer(WAN_I2V_TEXT_TOKENS), text_encoder=base.text_encoder,
                                       vae=base.vae, scheduler=base.scheduler, image_processor=image_processor,
                                       image_encoder=image_encoder, transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_cogvideox_i2v_pipeline(seed: int = 0, *, num_layers: int = 2) -> CogVideoXImageToVideoPipeline:
    """CogVideoXImageToVideoPipeline: the reference image's latent (noised a little, zero frames after it) is
    concatenated to the noisy latents on channels, so the transformer takes 8 input channels for 4 out."""
    base = tiny_cogvideox_pipeline(seed, num_layers=num_layers)
    transformer = tiny_cogvideox_transformer(seed, num_layers=num_layers, in_channels=8)
    return _assemble(CogVideoXImageToVideoPipeline, base.text_encoder, base.vae, transformer, base.scheduler)


def tiny_ltx_i2v_pipeline(seed: int = 0, *, num_layers: int = 2) -> LTXImageToVideoPipeline:
    """LTXImageToVideoPipeline: the reference image's latent replaces the first latent frame, whose tokens get
    timestep 0 (a per-token timestep `[B, tokens]`) and are left out of each scheduler step; same components as
    `tiny_ltx_pipeline`."""
    base = tiny_ltx_pipeline(seed, num_layers=num_layers)
    return _assemble(LTXImageToVideoPipeline, base.text_encoder, base.vae, base.transformer, base.scheduler)
