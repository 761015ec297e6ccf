"""Batch-invariant generation: a job's video must not depend on the jobs it shares a denoising loop with.

Per-sample noise comes from one generator per seed (diffusers' pipelines take a list). What remains is arithmetic:
a linear layer on a 2-D input with one row (a timestep or pooled-text embedding of one sample) runs as a
matrix-vector product, with B rows as a matrix product, and the two round differently (~1e-6), which flips the odd
uint8 level; a convolution picks its algorithm by shape, so a batch rounds differently too. `make_batch_invariant`
runs such linear layers one row at a time and convolutions one sample at a time, so every sample of a batch is
computed exactly as it is alone; token-level linear layers (3-D inputs, many rows per sample) already are. Measured:
tiny-shapes, tiny-CogVideoX and tiny-Wan batches of 3 give the same uint8 frames as alone, where plain batching
differed by up to 2e-6 (a few flipped levels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DecoderOutput

_MARK = "_pab_batch_invariant"


def _rowwise_linear(module: torch.nn.Linear) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] > 1:
            return torch.cat([F.linear(x[i : i + 1], module.weight, module.bias) for i in range(x.shape[0])])
        return F.linear(x, module.weight, module.bias)

    return forward


def _per_sample_conv(module: torch.nn.Module) -> Any:
    """A convolution picks its algorithm by input shape, so a batch would round differently from one sample."""
    plain = module.forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.dim() == module.weight.dim() and x.shape[0] > 1:  # batched [N, C, ...]
            return torch.cat([plain(x[i : i + 1], *args, **kwargs) for i in range(x.shape[0])])
        return plain(x, *args, **kwargs)

    return forward


_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
          torch.nn.ConvTranspose3d)


def make_batch_invariant(model: torch.nn.Module) -> int:
    """Make every `nn.Linear` of `model` compute 2-D inputs row by row and every convolution run sample by sample;
    returns how many layers it changed. Idempotent; a single sample and token-level inputs run exactly as before."""
    changed = 0
    for module in model.modules():
        if getattr(module, _MARK, False):
            continue
        if isinstance(module, torch.nn.Linear):
            module.forward = _rowwise_linear(module)
        elif isinstance(module, _CONVS):
            module.forward = _per_sample_conv(module)
        else:
            continue
        setattr(module, _MARK, True)
        changed += 1
    return changed


def decode_per_sample(vae: torch.nn.Module) -> bool:
    """Make `vae.decode` decode a batch one latent at a time (video VAEs carry per-call caches through their
    convolutions, so the split happens at the decode call, not per layer). Returns whether it changed `vae`."""
    if getattr(vae, _MARK, False) or not hasattr(vae, "decode"):
        return False

    plain = vae.decode

    def decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if z.shape[0] == 1:
            return plain(z, *args, **kwargs)
        outs = [plain(z[i : i + 1], *args, **kwargs) for i in range(z.shape[0])]
        if isinstance(outs[0], tuple):
            return (torch.cat([o[0] for o in outs]),)
        return DecoderOutput(sample=torch.cat([o.sample for o in outs]))

    vae.decode = decode
    setattr(vae, _MARK, True)
    return True
