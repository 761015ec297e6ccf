"""Classifier-free-guided DDIM sampling for the tiny model, shared by training-time evaluation and the pipeline.

Two training-free conditionings ride on the same loop (`Conditioning`): a known first frame (image-to-video,
RePaint-style: before every step the first frame of x_t is replaced by the reference noised to that step's level, and
the clean reference is put back at the end) and a source video to edit (SDEdit: the loop starts at the step matching
`strength`, from the source noised to that level).

Conditional and unconditional passes run as two forwards, each inside the transformer's `cache_context("cond")` /
`cache_context("uncond")` when it has one, so PAB keeps one cache per pass (the contract in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import LatteTransformer3DModel, SchedulerMixin

from pab.runtime.tinyvideo.text_encoder import WordEmbeddingTextEncoder


def _context(transformer: LatteTransformer3DModel, name: str):
    ctx = getattr(transformer, "cache_context", None)
    return ctx(name) if ctx is not None else contextlib.nullcontext()


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One CPU generator per seed, so a clip depends only on its own seed, not on the batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@dataclass(frozen=True)
class Conditioning:
    r"""
    Known pixels a generation is conditioned on, in [-1, 1].

    Args:
        first_frame: [B, C, 1, H, W]: the video's first frame (image-to-video), or None.
        source: [B, C, F, H, W]: a video to edit (SDEdit), or None.
        strength: With `source`: the fraction of the denoising steps to run, in (0, 1]; 1 starts from pure noise
            (the source is then ignored: the result equals text-to-video from the same seed).
    """

    first_frame: torch.Tensor | None = None
    source: torch.Tensor | None = None
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")


def start_step(num_steps: int, strength: float) -> int:
    """Index of the first of `num_steps` DDIM steps that SDEdit runs: round(strength x steps) steps run, at least one."""
    return num_steps - max(1, min(num_steps, round(strength * num_steps)))


def _start(scheduler: SchedulerMixin, noise: torch.Tensor, cond: Conditioning, num_steps: int) -> tuple[torch.Tensor, int]:
    """The starting sample and step: pure noise at step 0, or (SDEdit) the source noised to its start step's level."""
    first = start_step(num_steps, cond.strength) if cond.source is not None else 0
    if first == 0:
        return noise * scheduler.init_noise_sigma, 0
    t = scheduler.timesteps[first].reshape(1)
    return scheduler.add_noise(cond.source.to(noise), noise, t), first


def _anchor(scheduler: SchedulerMixin, x: torch.Tensor, noise: torch.Tensor, cond: Conditioning, t: torch.Tensor | None
            ) -> torch.Tensor:
    """x with its first frame replaced by the reference noised to timestep `t` (the sample's own initial noise of that
    frame, so it is seeded), or by the clean reference when `t` is None (after the last step)."""
    if cond.first_frame is None:
        return x
    ref = cond.first_frame.to(x)
    known = ref if t is None else scheduler.add_noise(ref, noise[:, :, :1], t.reshape(1))
    return torch.cat([known, x[:, :, 1:]], dim=2)


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
    conditioning: Conditioning | None = None,
) -> torch.Tensor:
    """The CFG denoising loop on v-prediction: noise [B, C, F, H, W] -> clips in [-1, 1]; `on_step` gets the index
    among the steps that run (SDEdit runs the last ones only)."""
    device, dtype = transformer.device, transformer.dtype
    known = conditioning or Conditioning()
    noise = noise.to(device, dtype)
    cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
    scheduler.set_timesteps(num_steps)
    x, first = _start(scheduler, noise, known, num_steps)
    for i, t in enumerate(scheduler.timesteps[first:]):
        x = _anchor(scheduler, x, noise, known, t)
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
    return _anchor(scheduler, x, noise, known, None).clamp(-1, 1)


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
