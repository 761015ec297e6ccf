"""How a pipeline maps pixels to latents and tokens: its VAE scale factors and its transformer's patch sizes.

Read one way everywhere (request validation, the sequence-parallel split, benchmarks); torch-free, so serving
processes can check sizes without importing torch.
"""

from __future__ import annotations

from typing import Any


# Each pipeline family names its VAE factors its own way (Mochi: vae_*_scale_factor, LTX: vae_*_compression_ratio).
_SPATIAL_ATTRS = ("vae_scale_factor_spatial", "vae_spatial_scale_factor", "vae_spatial_compression_ratio",
                  "vae_scale_factor")
_TEMPORAL_ATTRS = ("vae_scale_factor_temporal", "vae_temporal_scale_factor", "vae_temporal_compression_ratio")


def _first(pipeline: Any, names: tuple[str, ...]) -> int:
    return int(next((v for v in (getattr(pipeline, n, None) for n in names) if v), 1))


def spatial_scale(pipeline: Any) -> int:
    return _first(pipeline, _SPATIAL_ATTRS)


def temporal_scale(pipeline: Any) -> int:
    return _first(pipeline, _TEMPORAL_ATTRS)


def patch_sizes(transformer: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes of the transformer's patch embedding."""
    config = transformer.config
    patch = config.get("patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch)  # Wan: (t, h, w)
    return int(config.get("patch_size_t") or 1), int(patch), int(patch)


def decode_tiles(pipeline: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """(kernel, stride) in latents along frames, height and width for a VAE that decodes only whole tiles (Allegro's:
    a latent axis of length L decodes fully iff L >= kernel and (L - kernel) % stride == 0); None for other VAEs."""
    vae = getattr(pipeline, "vae", None)
    kernel, stride = getattr(vae, "kernel", None), getattr(vae, "stride", None)
    if type(vae).__name__ != "AutoencoderKLAllegro" or kernel is None or stride is None:
        return None
    rt, rs = temporal_scale(pipeline), spatial_scale(pipeline)
    return tuple((int(k) // r, int(s) // r) for k, s, r in zip(kernel, stride, (rt, rs, rs)))  # type: ignore[return-value]
