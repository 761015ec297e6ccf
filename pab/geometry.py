"""How a pipeline maps pixels to latents and tokens: its VAE scale factors and its transformer's patch sizes.

Read one way everywhere (request validation, the sequence-parallel split, benchmarks); torch-free, so serving
processes can check sizes without importing torch.
"""

from __future__ import annotations

from typing import Any


# Each pipeline family names its VAE factors its own way (Mochi: vae_*_scale_factor, LTX: vae_*_compression_ratio);
# a model card's stand-in pipeline carries the values read here under the first names (`describe`).
_SPATIAL_ATTRS = ("spatial_scale", "vae_scale_factor_spatial", "vae_spatial_scale_factor",
                  "vae_spatial_compression_ratio", "vae_scale_factor")
_TEMPORAL_ATTRS = ("temporal_scale", "vae_scale_factor_temporal", "vae_temporal_scale_factor",
                   "vae_temporal_compression_ratio")

PIPELINE_PIXEL_MULTIPLES: dict[str, int] = {
    "LattePipeline": 8,
    "CogVideoXPipeline": 8,
    "CogVideoXImageToVideoPipeline": 8,
    "CogVideoXVideoToVideoPipeline": 8,
    "WanPipeline": 16,
    "WanImageToVideoPipeline": 16,
    "WanVideoToVideoPipeline": 16,
    "HunyuanVideoPipeline": 16,
    "HunyuanVideoImageToVideoPipeline": 16,
    "AllegroPipeline": 8,
    "MochiPipeline": 8,
    "LTXPipeline": 32,
    "LTXImageToVideoPipeline": 32,
    "LTXConditionPipeline": 32,
}
"""What each diffusers pipeline's own `check_inputs` demands of height and width (`if height % N != 0 ...: raise`),
whatever its VAE and patch sizes allow: a request of another size would be accepted and then fail in the job.
`tests/pab/test_geometry.py` reads the numbers back from the installed diffusers source."""


def _first(pipeline: Any, names: tuple[str, ...]) -> int:
    return int(next((v for v in (getattr(pipeline, n, None) for n in names) if v), 1))


def spatial_scale(pipeline: Any) -> int:
    return _first(pipeline, _SPATIAL_ATTRS)


def temporal_scale(pipeline: Any) -> int:
    return _first(pipeline, _TEMPORAL_ATTRS)


def pixel_multiple(pipeline: Any) -> int:
    """The multiple of pixels the pipeline's own input check demands of height and width (1: none)."""
    recorded = getattr(pipeline, "pixel_multiple", None)
    return int(recorded) if recorded else PIPELINE_PIXEL_MULTIPLES.get(type(pipeline).__name__, 1)


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
    if hasattr(pipeline, "decode_tiles"):  # a model card's stand-in: recorded from the real VAE by `describe`
        tiles = pipeline.decode_tiles
        return tuple(tuple(int(v) for v in axis) for axis in tiles) if tiles else None  # type: ignore[return-value]
    vae = getattr(pipeline, "vae", None)
    kernel, stride = getattr(vae, "kernel", None), getattr(vae, "stride", None)
    if type(vae).__name__ != "AutoencoderKLAllegro" or kernel is None or stride is None:
        return None
    rt, rs = temporal_scale(pipeline), spatial_scale(pipeline)
    return tuple((int(k) // r, int(s) // r) for k, s, r in zip(kernel, stride, (rt, rs, rs)))  # type: ignore[return-value]


def decode_frame_batch(pipeline: Any) -> int | None:
    """Latent frames a VAE decodes per batch where a misfit count decodes to the wrong number of frames, else None.
    CogVideoX's VAE decodes `num_latent_frames_batch_size` (2) latents at a time and is exact only for 2k+1 of
    them (measured: 4 latents give 16 frames, not 13), so its videos have 8k+1 frames (CogVideoX ships 49)."""
    if hasattr(pipeline, "decode_frame_batch"):  # a model card's stand-in
        return int(pipeline.decode_frame_batch) if pipeline.decode_frame_batch else None
    vae = getattr(pipeline, "vae", None)
    batch = getattr(vae, "num_latent_frames_batch_size", None)
    return int(batch) if type(vae).__name__ == "AutoencoderKLCogVideoX" and batch and batch > 1 else None


def describe(pipeline: Any) -> dict[str, Any]:
    """What the functions above read from a loaded pipeline, as plain values: a model card records them, and a
    stand-in carrying them as attributes answers every function here as the pipeline itself does."""
    return {"spatial_scale": spatial_scale(pipeline), "temporal_scale": temporal_scale(pipeline),
            "pixel_multiple": pixel_multiple(pipeline), "decode_tiles": decode_tiles(pipeline),
            "decode_frame_batch": decode_frame_batch(pipeline)}
