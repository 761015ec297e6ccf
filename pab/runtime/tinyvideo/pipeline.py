"""`TinyVideoPipeline`: the trained tiny shapes model as a diffusers pipeline, and its embedded loader.

It has the call signature of diffusers' video pipelines (prompt, negative_prompt, num_frames, height, width,
num_inference_steps, guidance_scale, generator, output_type, callback_on_step_end), so `pab.runtime.pipelines.VideoGenerator`
drives it like Latte. Pixel space: there is no VAE, the transformer denoises RGB frames directly.

Training-free conditioning (`sampling.Conditioning`): `image=` makes it image-to-video (the first frame is the image,
RePaint-style), and `video=` with `strength=` video-to-video (SDEdit), with the argument names of diffusers'
image-to-video and video-to-video pipelines, so the serving layer drives every family the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, LatteTransformer3DModel
from diffusers.utils import BaseOutput
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from pab.runtime.tinyvideo.data import HELD_OUT, caption, parse_caption
from pab.runtime.tinyvideo.model import build_text_encoder, build_transformer, sample_scheduler
from pab.runtime.tinyvideo.objective import objective_check, video_statistics
from pab.runtime.tinyvideo.sampling import Conditioning, denoise, start_step
from pab.runtime.tinyvideo.text_encoder import PAD, UNK, WordEmbeddingTextEncoder

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_NAME = "tiny-shapes"
DEFAULTS: dict[str, Any] = {"num_inference_steps": 25, "guidance_scale": 3.0, "fps": 4}
DEFAULT_STRENGTH = 0.8
"""SDEdit strength when `video=` comes without one (diffusers' CogVideoX video-to-video default too)."""


def initial_noise(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """The starting noise: drawn from one generator, or one generator per sample (each sample's noise then depends
    only on its own generator, exactly as when it is drawn alone)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} prompts")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator])
    return torch.randn(shape, generator=generator, device=getattr(generator, "device", "cpu"))


@dataclass
class TinyVideoPipelineOutput(BaseOutput):
    frames: np.ndarray | torch.Tensor  # [B, F, H, W, 3] in [0, 1]


def _per_sample(value: Any, batch: int, name: str) -> list[Any]:
    """One item per sample: a list of `batch` items, or one item every sample shares."""
    items = list(value) if isinstance(value, (list, tuple)) else [value] * batch
    if len(items) != batch:
        raise ValueError(f"got {len(items)} {name} for a batch of {batch} prompts")
    return items


def _pixels(images: list[Image.Image], height: int, width: int, name: str) -> torch.Tensor:
    """PIL RGB images of the call's size -> float [C, len(images), H, W] in [-1, 1] (uint8 u -> u / 127.5 - 1, which
    the output's rounding maps back to u exactly)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    for a in arrays:
        if a.shape[:2] != (height, width):
            raise ValueError(f"{name} must be {width}x{height} (the call's width x height), got {a.shape[1]}x{a.shape[0]}")
    frames = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1.0  # [N, H, W, C]
    return frames.permute(3, 0, 1, 2)


def conditioning(
    image: Image.Image | list[Image.Image] | None, video: list[Image.Image] | list[list[Image.Image]] | None,
    strength: float, batch: int, frames: int, height: int, width: int,
) -> Conditioning | None:
    """The call's `image=` (one per sample, or shared) and `video=` (a list of frames, or one list per sample) as
    pixels for `sampling.denoise`."""
    if image is not None and video is not None:
        raise ValueError("pass image= (image-to-video) or video= (video-to-video), not both")
    if image is not None:
        first = [_pixels([im], height, width, "image") for im in _per_sample(image, batch, "images")]
        return Conditioning(first_frame=torch.stack(first))
    if video is not None:
        clips = _per_sample(video, batch, "videos") if video and isinstance(video[0], (list, tuple)) else [video] * batch
        if any(len(clip) != frames for clip in clips):
            raise ValueError(f"video must have {frames} frames (num_frames), got {[len(c) for c in clips]}")
        return Conditioning(source=torch.stack([_pixels(list(c), height, width, "video") for c in clips]),
                            strength=float(strength))
    return None


class TinyVideoPipeline(DiffusionPipeline):
    """Text-to-video with a pixel-space Latte transformer and a word-embedding text encoder."""

    model_cpu_offload_seq = "text_encoder->transformer"
    per_sample_guidance = True
    """`guidance_scale` may be a list with one scale per prompt (the serving engine batches such requests)."""

    def __init__(
        self, transformer: LatteTransformer3DModel, text_encoder: WordEmbeddingTextEncoder, scheduler: DDIMScheduler
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, scheduler=scheduler)
        self._num_timesteps = 0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def prompt_vocabulary(self) -> dict[str, Any]:
        """The words the text encoder knows; `pab.runtime.request.params.validate_params` refuses prompts with others."""
        return {
            "words": [w for w in self.text_encoder.index if w not in (PAD, UNK)],
            "max_words": self.text_encoder.config.max_length,
            "example": caption("red", "square", "left"),
        }

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save as diffusers does, then name the text encoder's module so `from_pretrained` finds it offline."""
        super().save_pretrained(save_directory, **kwargs)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["text_encoder"] = [WordEmbeddingTextEncoder.__module__, WordEmbeddingTextEncoder.__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def _sizes(self, num_frames: int | None, height: int | None, width: int | None) -> tuple[int, int, int]:
        """Frames must match the temporal position table; height/width any multiple of the patch size (the spatial
        position table is sin-cos and extends, but the model was trained at sample_size only)."""
        cfg = self.transformer.config
        frames, height, width = num_frames or cfg.video_length, height or cfg.sample_size, width or cfg.sample_size
        if frames != cfg.video_length:
            raise ValueError(f"num_frames must be {cfg.video_length} for this model (its temporal embedding has "
                             f"{cfg.video_length} positions), got {frames}")
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % cfg.patch_size:
                raise ValueError(f"{name} must be a positive multiple of the patch size {cfg.patch_size} (trained at "
                                 f"{cfg.sample_size}), got {value}")
        return frames, height, width

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULTS["num_inference_steps"],
        guidance_scale: float | list[float] = DEFAULTS["guidance_scale"],
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        return_dict: bool = True,
        image: Image.Image | list[Image.Image] | None = None,
        video: list[Image.Image] | list[list[Image.Image]] | None = None,
        strength: float = DEFAULT_STRENGTH,
    ) -> TinyVideoPipelineOutput | tuple:
        """Text-to-video; with `image` the first frame is that image (one per prompt, or shared); with `video` (its
        frames, or one list per prompt) and `strength` in (0, 1] an edit of that video (SDEdit)."""
        cfg = self.transformer.config
        frames, height, width = self._sizes(num_frames, height, width)
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        shape = (len(prompts), cfg.in_channels, frames, height, width)
        noise = initial_noise(shape, generator)
        cond, uncond = self.text_encoder.encode(prompts), self.text_encoder.encode(negatives)
        known = conditioning(image, video, strength, len(prompts), frames, height, width)
        self._num_timesteps = num_inference_steps
        if known is not None and known.source is not None:
            self._num_timesteps = num_inference_steps - start_step(num_inference_steps, known.strength)

        def on_step(i: int, t: int, x: torch.Tensor) -> None:
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"latents": x})

        if isinstance(guidance_scale, (list, tuple)):  # one scale per sample (`per_sample_guidance`)
            guidance_scale = torch.tensor(guidance_scale, dtype=torch.float32).view(-1, 1, 1, 1, 1)
        clips = denoise(self.transformer, self.scheduler, noise, cond, uncond, num_inference_steps, guidance_scale,
                        on_step, known)
        video = ((clips.permute(0, 2, 3, 4, 1).float() + 1) / 2).clamp(0, 1).cpu()  # [B, F, H, W, 3]
        frames = video.numpy() if output_type == "np" else video
        self.maybe_free_model_hooks()
        return TinyVideoPipelineOutput(frames=frames) if return_dict else (frames,)


REFERENCE = {"prompt": "a blue square moving right", "seed": 0, "num_inference_steps": 10, "guidance_scale": 3.0}
"""The fixed generation whose statistics ship with the weights (`reference_stats.json`) and are checked by a test."""


def reference_statistics(pipe: TinyVideoPipeline) -> dict[str, Any]:
    """Generate the REFERENCE clip and summarise it (`objective.video_statistics` + the objective check)."""
    r = REFERENCE
    frames = pipe(r["prompt"], generator=torch.Generator().manual_seed(r["seed"]),
                  num_inference_steps=r["num_inference_steps"], guidance_scale=r["guidance_scale"]).frames[0]
    check = objective_check(frames, parse_caption(r["prompt"]))
    return {**r, **video_statistics(frames), "colour": check.colour, "direction": check.direction, "shape": check.shape}


def write_sample_sheet(pipe: TinyVideoPipeline, path: str | Path, seed: int = 0, scale: int = 4) -> None:
    """A PNG of the held-out captions (rows, in `HELD_OUT` order), frames left to right, `scale`x nearest-upscaled."""
    rows = []
    for combo in HELD_OUT:
        frames = pipe(caption(*combo), generator=torch.Generator().manual_seed(seed)).frames[0]  # [F, H, W, 3] in [0, 1]
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
        gap = np.full((frames.shape[1], 2, 3), 64, dtype=np.uint8)
        rows.append(np.concatenate([part for f in frames for part in (np.asarray(f), gap)][:-1], axis=1))
    sheet = np.concatenate([part for r in rows for part in (r, np.full((2, r.shape[1], 3), 64, np.uint8))][:-1])
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST).save(path)


def is_tiny_video_folder(path: str | Path) -> bool:
    """A folder written by `TinyVideoPipeline.save_pretrained` (diffusers' generic loader cannot resolve the class)."""
    index = Path(path) / "model_index.json"
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == TinyVideoPipeline.__name__


def load_tiny_shapes(seed: int = 0, path: str | Path = WEIGHTS_DIR) -> TinyVideoPipeline:
    """The shipped trained weights, offline. `seed` is accepted for the embedded-model builder signature and unused:
    the weights are fixed; sampling is seeded per request."""
    del seed
    if not (Path(path) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no trained tiny-shapes weights at {path}; export them with "
            f"`python -m pab.runtime.tinyvideo.train --export {path}` (see pab/runtime/tinyvideo/weights/MODEL_CARD.md)"
        )
    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" would clutter every CLI run
    try:
        pipe = TinyVideoPipeline.from_pretrained(str(path))
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_tiny_shapes(seed: int = 0, *, hidden: int = 32, layers: int = 2) -> TinyVideoPipeline:
    """The same architecture with random weights (tests, and the model before training); leaves the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = TinyVideoPipeline(build_transformer(hidden=hidden, layers=layers), build_text_encoder(),
                                 sample_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
