"""How each family lays its video out at the transformer input, and the shape rules of each split over it.

One place for the latent layouts (`[B, C, F, H, W]`, CogVideoX's `[B, F, C, H, W]`, LTX-Video's patchified
`[B, tokens, C]`), read by the per-forward checks, the request-time check and the analytic schedule alike. Torch-free:
the request resolver checks a request against these rules from the model card alone (a stand-in transformer whose
`config` is the card's mapping), so serving processes refuse a size that cannot be split without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..geometry import patch_sizes, spatial_scale, temporal_scale
from .config import ParallelConfigError

if TYPE_CHECKING:  # annotations only: the request resolver imports this module in torch-free processes
    import torch

CHANNEL_DIM: dict[str, int] = {"cogvideox": 2, "ltx-video": 2}
"""The latent's channel axis, per adapter name, where it is not 1."""


def video_tokens(model: str, transformer: torch.nn.Module, latent_shape: tuple[int, ...]) -> tuple[int, int]:
    """(latent frames, tokens per frame) of a transformer input of `latent_shape`; LTX-Video's input is already a
    token sequence, reported as one frame of all its tokens (only the product matters to its split)."""
    pt, ph, pw = patch_sizes(transformer)
    if model == "ltx-video":
        return 1, latent_shape[1]
    if model == "cogvideox":
        _, frames, _, height, width = latent_shape
        return -(-frames // pt), (height // ph) * (width // pw)
    _, _, frames, height, width = latent_shape
    return frames // pt, (height // ph) * (width // pw)


def request_latent_shape(model: str, pipeline: Any, transformer: torch.nn.Module, num_frames: int, height: int,
                         width: int) -> tuple[int, ...]:
    """The transformer input (batch 1) a request of this output size (pixels) produces."""
    frames = (num_frames - 1) // temporal_scale(pipeline) + 1
    scale = spatial_scale(pipeline)
    h, w, channels = height // scale, width // scale, transformer.config["in_channels"]
    if model == "cogvideox":
        return (1, frames, channels, h, w)
    if model == "ltx-video":
        pt, ph, pw = patch_sizes(transformer)
        return (1, (frames // pt) * (h // ph) * (w // pw), channels)
    return (1, channels, frames, h, w)


def require_divisible(value: int, n: int, what: str, field: str, advice: str) -> None:
    if value % n:
        raise ParallelConfigError(f"{what} = {value} is not divisible by sp_degree = {n}; {advice}", field)


def check_latents(model: str, strategy: str, transformer: torch.nn.Module, n: int, latent_shape: tuple[int, ...]) -> None:
    """The shape rules of each scheme; called per forward (before any collective, identically on every rank)."""
    if n == 1:
        return
    frames, per_frame = video_tokens(model, transformer, latent_shape)
    if model == "latte":
        require_divisible(frames, n, "latent frames", "num_frames",
                          "Latte shards frames over ranks: use a frame count that is a multiple of sp_degree")
        if frames // n < 2:
            raise ParallelConfigError(
                f"latent frames = {frames} over sp_degree = {n} leaves {frames // n} frame per rank; Latte adds its "
                f"temporal position embedding only to multi-frame inputs: use sp_degree <= {frames // 2}",
                "sp_degree",
            )
        if strategy == "dsp":
            require_divisible(per_frame, n, "tokens per frame", "height",
                              "DSP re-shards the spatial tokens around temporal attention: choose height/width so "
                              "(height/8/patch) x (width/8/patch) is a multiple of sp_degree")
        return
    if model == "cogvideox":
        return  # any token count: padded to a multiple of sp_degree and masked (TextVideoShardHook)
    require_divisible(frames * per_frame, n, "video tokens (latent frames x tokens per frame)", "num_frames",
                      "Ulysses shards the token sequence: pick num_frames/height/width whose token count is a "
                      "multiple of sp_degree")
