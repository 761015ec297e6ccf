"""Shared helpers for the pab tests: run a tiny pipeline to latents with fixed settings."""

from __future__ import annotations

import pytest
import torch

from diffusers import LattePipeline

from pab.runtime.models.tiny import TEXT_TOKENS


def run_to_latents(pipe, *, steps: int = 12, seed: int = 0, prompt: str = "a red car drives fast") -> torch.Tensor:
    """Run the pipeline deterministically and return its final latents (no VAE decode: faster, stricter)."""
    if isinstance(pipe, LattePipeline):
        extra = {"video_length": pipe.transformer.config.video_length, "clean_caption": False}
    else:
        extra = {"num_frames": 9}
    text_len = pipe.transformer.config.get("max_text_seq_length")
    if text_len:
        extra["max_sequence_length"] = text_len  # CogVideoX's text positions cover exactly this many tokens
    elif not isinstance(pipe, LattePipeline):
        extra["max_sequence_length"] = TEXT_TOKENS  # Wan pads to 512 by default; the tiny tokenizer stops at 32
    with torch.no_grad():
        out = pipe(
            prompt=prompt,
            negative_prompt="dark night",
            num_inference_steps=steps,
            guidance_scale=5.0,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **extra,
        )
    return out.frames if hasattr(out, "frames") else out[0]


@pytest.fixture
def latents():
    return run_to_latents
