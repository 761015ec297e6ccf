"""The generation front door: load a video pipeline, validate a request against it, and run it with PAB.

Everything above this module (worker actors, the HTTP API, benchmarks) generates through `VideoGenerator`, so
seeding, progress reporting, PAB application and per-request PAB overrides behave the same everywhere.
"""

from __future__ import annotations

import inspect
import math
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from diffusers import DiffusionPipeline

from .adapters import UnsupportedModelError, adapter_for
from .config import PABConfig, PABConfigError
from .hooks import PABHandle, apply_pab
from .presets import get_preset
from .testing import EMBEDDED_MODELS
from .tinyvideo.pipeline import TRAINED_MODELS
from .video import encode_video  # noqa: F401  (part of the pab.pipelines contract in docs/ARCHITECTURE.md)

OnStep = Callable[[int, int], None]
"""`on_step(step_index, total_steps)`, called after each denoising step; raising from it aborts the generation."""

MAX_SEED = 2**63 - 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FPS_BY_PIPELINE = {"WanPipeline": 16}  # the rest of the supported families ship 8 fps
_DEFAULTS_ATTR = "_pab_generation_defaults"


class GenerationParamsError(ValueError):
    """A request parameter is invalid; `field` names it so the HTTP layer can report `param`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelLoadError(ValueError):
    """`load_pipeline` could not resolve the model name; the message lists the embedded names."""


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise GenerationParamsError(name, f"must be an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class GenerationParams:
    r"""
    One text-to-video request. `None` fields take the model's default (see `VideoGenerator.resolve`).

    Args:
        prompt (`str`): What to generate.
        negative_prompt (`str`): What to steer away from (used when guidance_scale > 1).
        num_frames, height, width (`int`): Output size; `validate_params` checks the model can produce it exactly.
        num_inference_steps (`int`): Denoising steps.
        guidance_scale (`float`): Classifier-free guidance; <= 1 turns CFG off.
        seed (`int`): Same seed, same frames. `None` draws one; the result's params record it.
        fps (`int`): Frame rate for encoding; does not change the frames.
    """

    prompt: str
    negative_prompt: str = ""
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    fps: int | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 10_000:
                raise GenerationParamsError(name, f"must be a string of at most 10000 characters, got {value!r:.80}")
        if not self.prompt.strip():
            raise GenerationParamsError("prompt", "must not be empty")
        limits = {"num_frames": (1, 1024), "height": (1, 8192), "width": (1, 8192),
                  "num_inference_steps": (1, 1000), "seed": (0, MAX_SEED), "fps": (1, 120)}
        for name, (lo, hi) in limits.items():
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), lo, hi)
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not (math.isfinite(g) and 0 <= g <= 100)):
            raise GenerationParamsError("guidance_scale", f"must be a number in [0, 100], got {g!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GenerationParamsError(unknown[0], f"unknown parameter; allowed: {sorted(known)}")
        if "prompt" not in data:
            raise GenerationParamsError("prompt", "is required")
        return cls(**data)


@dataclass
class GenerationResult:
    r"""
    Args:
        frames (`np.ndarray`): uint8 [F, H, W, 3].
        stats (`dict`): `PABStats.to_dict()` of this generation (empty when the model has no PAB adapter).
        timings (`dict`): `denoise_s` (prompt encoding + denoising loop), `decode_s` (VAE decode + conversion to
            uint8), `total_s`.
        params (`GenerationParams`): The resolved parameters, seed included: rerunning them reproduces the frames.
        pab (`dict`, *optional*): `PABConfig.to_dict()` of the setting this generation ran with (None when unhooked).
    """

    frames: np.ndarray
    stats: dict[str, Any]
    timings: dict[str, float]
    params: GenerationParams
    pab: dict[str, Any] | None = field(default=None)


def load_pipeline(model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> DiffusionPipeline:
    """
    Load an embedded tiny model by name (`pab.testing.EMBEDDED_MODELS`), else `DiffusionPipeline.from_pretrained`
    (a local directory, or a hub id when the hub is reachable).
    """
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ModelLoadError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    entry = EMBEDDED_MODELS.get(model) or TRAINED_MODELS.get(model)
    if entry is not None:
        pipeline = entry.build()
        setattr(pipeline, _DEFAULTS_ATTR, entry.defaults())
    else:
        try:
            pipeline = DiffusionPipeline.from_pretrained(model, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model {model!r} is not an embedded model ({sorted({**EMBEDDED_MODELS, **TRAINED_MODELS})}) and "
                f"from_pretrained failed: "
                f"{exc}. Pass a directory saved with save_pretrained, or a hub id with the hub reachable."
            ) from exc
        pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device, dtype) if dtype is not None else pipeline.to(device)


def _call_defaults(pipeline: DiffusionPipeline) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(pipeline.__call__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _spatial_scale(pipeline: DiffusionPipeline) -> int:
    return int(getattr(pipeline, "vae_scale_factor_spatial", None) or getattr(pipeline, "vae_scale_factor", 1))


def _temporal_scale(pipeline: DiffusionPipeline) -> int:
    return int(getattr(pipeline, "vae_scale_factor_temporal", None) or 1)


def _patch_sizes(transformer: torch.nn.Module) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes of the transformer's patch embedding."""
    config = transformer.config
    patch = config.get("patch_size", 1) or 1
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch)  # Wan: (t, h, w)
    return int(config.get("patch_size_t") or 1), int(patch), int(patch)


def pipeline_defaults(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """Generation defaults for a pipeline: what its loader recorded, else its sample size and `__call__` defaults."""
    recorded = getattr(pipeline, _DEFAULTS_ATTR, None)
    if recorded:
        return dict(recorded)
    call = _call_defaults(pipeline)
    config = pipeline.transformer.config
    scale = _spatial_scale(pipeline)
    sample_h = config.get("sample_height") or config.get("sample_size")
    sample_w = config.get("sample_width") or config.get("sample_size")
    return {
        "num_frames": config.get("video_length") or config.get("sample_frames") or call.get("num_frames") or 16,
        "height": sample_h * scale if sample_h else call.get("height") or 480,
        "width": sample_w * scale if sample_w else call.get("width") or 832,
        "num_inference_steps": call.get("num_inference_steps", 50),
        "guidance_scale": float(call.get("guidance_scale", 5.0)),
        "fps": _FPS_BY_PIPELINE.get(type(pipeline).__name__, 8),
    }


def validate_params(pipeline: DiffusionPipeline, params: GenerationParams) -> None:
    """
    Reject sizes the pipeline would silently change: height/width must be multiples of VAE scale x patch size,
    the frame count must survive temporal compression exactly, and Latte takes only its trained `video_length`.
    """
    transformer = pipeline.transformer
    config = transformer.config
    patch_t, patch_h, patch_w = _patch_sizes(transformer)
    scale = _spatial_scale(pipeline)
    for name, patch in (("height", patch_h), ("width", patch_w)):
        value, multiple = getattr(params, name), scale * patch
        if value is None or value % multiple:
            near = max(multiple, round((value or 0) / multiple) * multiple)
            raise GenerationParamsError(
                name, f"must be a multiple of {multiple} for this model (VAE x{scale} x patch {patch}), got {value}; try {near}"
            )
    frames = params.num_frames
    if frames is None:
        raise GenerationParamsError("num_frames", "is required")
    video_length = config.get("video_length")
    if video_length is not None and frames not in (video_length, 1):
        raise GenerationParamsError(
            "num_frames", f"must be {video_length} for this model (its temporal embedding is trained for {video_length} frames), got {frames}"
        )
    tscale = _temporal_scale(pipeline)
    if (frames - 1) % tscale:
        near = max(1, round((frames - 1) / tscale) * tscale + 1)
        raise GenerationParamsError(
            "num_frames", f"must be {tscale}k+1 for this model (VAE compresses time {tscale}x), got {frames}; try {near}"
        )
    latent_frames = (frames - 1) // tscale + 1
    if latent_frames % patch_t:
        raise GenerationParamsError(
            "num_frames", f"must give a latent frame count divisible by the temporal patch {patch_t}, got {frames} ({latent_frames} latent)"
        )
    rope_max = config.get("rope_max_seq_len")
    if rope_max:
        for name, length in (("num_frames", latent_frames // patch_t), ("height", params.height // scale // patch_h),
                             ("width", params.width // scale // patch_w)):
            if length > rope_max:
                raise GenerationParamsError(name, f"is too large: {length} positions after patching, the model's rotary table holds {rope_max}")


def _call_kwargs(pipeline: DiffusionPipeline, params: GenerationParams) -> dict[str, Any]:
    """Map params onto this pipeline's `__call__` (Latte says `video_length`, CogVideoX wants its text length)."""
    accepted = _call_defaults(pipeline)
    kwargs: dict[str, Any] = {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "height": params.height,
        "width": params.width,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "output_type": "np",
    }
    kwargs["video_length" if "video_length" in accepted else "num_frames"] = params.num_frames
    if "clean_caption" in accepted:
        kwargs["clean_caption"] = False  # needs bs4 + ftfy; the tokenizer sees the prompt as written
    if "max_sequence_length" in accepted:
        # CogVideoX's positional table covers exactly max_text_seq_length text tokens; others pad to the signature
        # default unless the tokenizer declares a shorter limit.
        declared = getattr(getattr(pipeline, "tokenizer", None), "model_max_length", None) or math.inf
        text_len = pipeline.transformer.config.get("max_text_seq_length") or min(accepted["max_sequence_length"], declared)
        kwargs["max_sequence_length"] = int(text_len)
    return kwargs


def to_uint8(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float frames in [0, 1] -> uint8, rounding like diffusers' `numpy_to_pil`."""
    if isinstance(video, torch.Tensor):
        video = video.float().cpu().numpy()
    return (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)


def _apply_parallel(pipeline: DiffusionPipeline, parallel: Any) -> Any:
    """Hand the pipeline to `pab.parallel.apply_parallel(pipeline, parallel)`; its return value is kept."""
    try:
        from . import parallel as parallel_module
    except ImportError as exc:
        if exc.name != f"{__package__}.parallel":
            raise
        raise RuntimeError("parallel= needs the pab.parallel module, which this build lacks; pass parallel=None") from exc
    apply = getattr(parallel_module, "apply_parallel", None)
    if apply is None:
        raise RuntimeError("pab.parallel provides no apply_parallel(pipeline, config); pass parallel=None")
    return apply(pipeline, parallel)


class VideoGenerator:
    r"""
    Runs one pipeline for many requests, with PAB applied once.

    Args:
        pipeline: a diffusers video pipeline (e.g. from `load_pipeline`).
        pab: default PAB setting: a `PABConfig`, a preset name ("PAB-246", "reference", ...) or `None` ("none":
            count every attention call, broadcast nothing). Models without a PAB adapter run unhooked when this is
            None.
        defaults: generation defaults overriding `pipeline_defaults(pipeline)`.
        parallel: a sequence-parallel setting handed to `pab.parallel.apply_parallel`; None runs on one device.
    """

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        pab: PABConfig | str | Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        parallel: Any = None,
    ) -> None:
        self.pipeline = pipeline
        self.defaults = {**pipeline_defaults(pipeline), **(defaults or {})}
        self.parallel = _apply_parallel(pipeline, parallel) if parallel is not None else None
        try:
            self.adapter = adapter_for(pipeline.transformer)
        except UnsupportedModelError:
            if pab is not None:
                raise
            self.adapter = None
        self.pab_config = self.resolve_pab(pab) if self.adapter is not None else None
        self._handle: PABHandle | None = (
            apply_pab(pipeline.transformer, self.pab_config, self.adapter) if self.adapter is not None else None
        )
        self._lock = threading.Lock()

    @property
    def pab_handle(self) -> PABHandle | None:
        return self._handle

    def resolve_pab(self, pab: PABConfig | str | Mapping[str, Any] | None) -> PABConfig:
        """A preset name, a config dict (`PABConfig.to_dict()` form) or a config -> `PABConfig` for this model."""
        if pab is None:
            return PABConfig.disabled()
        if isinstance(pab, PABConfig):
            return pab
        if self.adapter is None:
            raise UnsupportedModelError(f"{type(self.pipeline.transformer).__name__} has no PAB adapter; use pab=None")
        if isinstance(pab, str):
            return get_preset(pab, self.adapter)
        if isinstance(pab, Mapping):
            return PABConfig.from_dict(pab)
        raise PABConfigError(f"pab must be a preset name, a config mapping or a PABConfig, got {type(pab).__name__}")

    def resolve(self, params: GenerationParams) -> GenerationParams:
        """Fill `None` fields from the model defaults, draw a seed if none, and validate against the pipeline."""
        filled = {k: self.defaults[k] for k in self.defaults if getattr(params, k, None) is None}
        if params.seed is None:
            filled["seed"] = secrets.randbelow(MAX_SEED + 1)
        resolved = replace(params, **filled)
        validate_params(self.pipeline, resolved)
        if self.parallel is not None:  # the size must also split over the replica's ranks (pab.parallel)
            try:
                self.parallel.validate_request(self.pipeline, resolved.num_frames, resolved.height, resolved.width)
            except ValueError as exc:
                raise GenerationParamsError(getattr(exc, "field", None) or "num_frames", str(exc)) from exc
        return resolved

    def generate(
        self,
        params: GenerationParams,
        *,
        pab: PABConfig | str | Mapping[str, Any] | None = None,
        on_step: OnStep | None = None,
    ) -> GenerationResult:
        """Generate one video. `pab` overrides the default PAB setting for this request only."""
        params = self.resolve(params)
        config = self.resolve_pab(pab) if pab is not None else self.pab_config
        kwargs = _call_kwargs(self.pipeline, params)
        with self._lock:
            if self._handle is not None:
                if self._handle.config != config:
                    self._handle.configure(config)
                self._handle.reset()
            marks = {"start": time.perf_counter()}
            marks["denoised"] = marks["start"]

            def step_end(pipe: DiffusionPipeline, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                marks["denoised"] = time.perf_counter()
                if on_step is not None:
                    on_step(step, pipe.num_timesteps or params.num_inference_steps)
                return {}

            generator = torch.Generator(device="cpu").manual_seed(params.seed)
            output = self.pipeline(**kwargs, generator=generator, callback_on_step_end=step_end)
            frames = to_uint8(output.frames[0])
            end = time.perf_counter()
            stats = self._handle.stats.to_dict() if self._handle is not None else {}
        expected = (params.num_frames, params.height, params.width, 3)
        if frames.shape != expected:
            raise RuntimeError(f"pipeline returned frames {frames.shape}, expected {expected}; validate_params misses a rule")
        timings = {
            "denoise_s": marks["denoised"] - marks["start"],
            "decode_s": end - marks["denoised"],
            "total_s": end - marks["start"],
        }
        return GenerationResult(frames, stats, timings, params, config.to_dict() if self._handle is not None else None)
