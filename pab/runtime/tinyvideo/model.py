"""The tiny model's architecture and noise schedule, in one place for training, sampling and tests.

A pixel-space `LatteTransformer3DModel` (spatial blocks with self + cross attention, temporal blocks with self
attention) - the real diffusers class, so PAB's Latte adapter and hooks apply unchanged. The scheduler uses 1000 train
timesteps so that PAB windows (0..1000) mean the same as for the paper's models.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, LatteTransformer3DModel

from pab.runtime.tinyvideo.data import DEFAULT_SPEC, ClipSpec
from pab.runtime.tinyvideo.text_encoder import WordEmbeddingTextEncoder

SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": False,
}


def transformer_config(
    spec: ClipSpec = DEFAULT_SPEC, hidden: int = 96, heads: int = 4, layers: int = 3, text_dim: int = 64
) -> dict[str, Any]:
    return {
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": 3,
        "out_channels": 3,
        "num_layers": layers,
        "cross_attention_dim": hidden,  # captions are projected to the hidden size by caption_projection
        "attention_bias": True,
        "sample_size": spec.size,
        "patch_size": 4,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "caption_channels": text_dim,
        "video_length": spec.num_frames,
    }


def build_transformer(**kwargs: Any) -> LatteTransformer3DModel:
    return LatteTransformer3DModel(**transformer_config(**kwargs))


def build_text_encoder(text_dim: int = 64) -> WordEmbeddingTextEncoder:
    return WordEmbeddingTextEncoder(embed_dim=text_dim)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sample_scheduler() -> DDIMScheduler:
    """DDIM over the training schedule; `timestep_spacing="trailing"` so the first step starts at t=999."""
    return DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", set_alpha_to_one=False, rescale_betas_zero_snr=False)
