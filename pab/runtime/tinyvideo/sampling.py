"""Classifier-free-guided DDIM sampling for the tiny model, shared by training-time evaluation and the pipeline.

Conditional and unconditional passes run as two forwards, each inside the transformer's `cache_context("cond")` /
`cache_context("uncond")` when it has one, so PAB keeps one cache per pass (the contract in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from diffusers import LatteTransformer3DModel, SchedulerMixin

from pab.runtime.tinyvideo.text_encoder import WordEmbeddingTextEncoder


def _context(transformer: LatteTransformer3DModel, name: str):
    ctx = getattr(transformer, "cache_context", None)
    return ctx(name) if ctx is not None else contextlib.nullcontext()


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One CPU generator per seed, so a clip depends only on its own seed, not on the batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def denoise(
    transformer: LatteTransformer3DModel,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    num_steps: int,
    guidance: float | torch.Tensor,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The CFG denoising loop on v-prediction: noise [B, C, F, H, W] -> clips in [-1, 1]."""
    device, dtype = transformer.device, transformer.dtype
    x = noise.to(device, dtype) * scheduler.init_noise_sigma
    cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
    scheduler.set_timesteps(num_steps)
    for i, t in enumerate(scheduler.timesteps):
        tt = t.expand(x.shape[0]).to(device)
        with _context(transformer, "cond"):
            v = transformer(x, timestep=tt, encoder_hidden_states=cond).sample
        if torch.is_tensor(guidance) or guidance != 1.0:  # a per-sample tensor only ever comes with CFG on
            with _context(transformer, "uncond"):
                v_u = transformer(x, timestep=tt, encoder_hidden_states=uncond).sample
            v = v_u + guidance * (v - v_u)
        x = scheduler.step(v, t, x).prev_sample
        if on_step is not None:
            on_step(i, int(t), x)
    return x.clamp(-1, 1)


def sample(
    transformer: LatteTransformer3DModel,
    text_encoder: WordEmbeddingTextEncoder,
    scheduler: SchedulerMixin,
    captions: list[str],
    seeds: list[int],
    num_steps: int = 25,
    guidance: float = 3.0,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Generate one clip per (caption, seed) as float [B, 3, F, H, W] in [-1, 1]."""
    if len(captions) != len(seeds):
        raise ValueError(f"captions and seeds must pair up; got {len(captions)} captions and {len(seeds)} seeds")
    cfg = transformer.config
    noise = initial_noise(seeds, (cfg.in_channels, cfg.video_length, cfg.sample_size, cfg.sample_size))
    with torch.no_grad():
        cond, uncond = text_encoder.encode(captions), text_encoder.encode([""] * len(captions))
    return denoise(transformer, scheduler, noise, cond, uncond, num_steps, guidance, on_step)


def to_uint8_frames(clip: torch.Tensor) -> "torch.Tensor":
    """One clip [3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((clip.permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
