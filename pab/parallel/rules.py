"""The shape rules of each sequence-parallel scheme, torch-free.

The parallel forward checks every latent video against them (identically on every rank, before any collective), and
the request resolver checks a request's size against the same rules before a job is accepted, from the model card
alone (`pab.runtime.request.resolve`), so serving processes need no torch to refuse a size that cannot be split.
"""

from __future__ import annotations

from typing import Any

from .config import ParallelConfigError


def _config(transformer: Any) -> Any:
    """A transformer's config, or the config mapping itself (the model card carries only the mapping)."""
    return getattr(transformer, "config", transformer)


def require_divisible(value: int, n: int, what: str, field: str, advice: str) -> None:
    if value % n:
        raise ParallelConfigError(f"{what} = {value} is not divisible by sp_degree = {n}; {advice}", field)


def video_tokens(model: str, transformer: Any, latent_shape: tuple[int, ...]) -> tuple[int, int]:
    """(latent frames, tokens per frame) of a transformer input of `latent_shape`."""
    config = _config(transformer)
    if model == "latte":  # [B, C, F, H, W]
        _, _, frames, height, width = latent_shape
        p = config["patch_size"]
        return frames, (height // p) * (width // p)
    if model == "cogvideox":  # [B, F, C, H, W]
        _, frames, _, height, width = latent_shape
        p, pt = config["patch_size"], config.get("patch_size_t") or 1
        return -(-frames // pt), (height // p) * (width // p)
    _, _, frames, height, width = latent_shape  # wan: [B, C, F, H, W], patch (t, h, w)
    pt, ph, pw = config["patch_size"]
    return frames // pt, (height // ph) * (width // pw)


def latent_shape(model: str, transformer: Any, frames: int, height: int, width: int) -> tuple[int, ...]:
    """The latent video a request of `frames` latent frames and `height` x `width` latent pixels becomes."""
    channels = _config(transformer)["in_channels"]
    if model == "cogvideox":
        return (1, frames, channels, height, width)
    return (1, channels, frames, height, width)


def check_latents(model: str, strategy: str, transformer: Any, n: int, latent_shape: tuple[int, ...]) -> None:
    """Raise `ParallelConfigError` (naming the request field) when this latent video cannot be split over `n`."""
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
