"""How a pipeline maps pixels to latents and tokens: its VAE scale factors and its transformer's patch sizes.

Read one way everywhere (request validation, the sequence-parallel split, benchmarks); torch-free, so serving
processes can check sizes without importing torch.
"""

from __future__ import annotations

from typing import Any


def spatial_scale(pipeline: Any) -> int:
    return int(getattr(pipeline, "vae_scale_factor_spatial", None) or getattr(pipeline, "vae_scale_factor", 1))


def temporal_scale(pipeline: Any) -> int:
    return int(getattr(pipeline, "vae_scale_factor_temporal", None) or 1)


def patch_sizes(transformer: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes of the transformer's patch embedding."""
    config = transformer.config
    patch = config.get("patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch)  # Wan: (t, h, w)
    return int(config.get("patch_size_t") or 1), int(patch), int(patch)
