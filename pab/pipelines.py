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
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from diffusers import DiffusionPipeline

from .adapters import UnsupportedModelError, adapter_for
from .config import PABConfig, PABConfigError
from .params import (  # noqa: F401  (re-exported: part of the pab.pipelines contract)
    MAX_SEED,
    GenerationParams,
    GenerationParamsError,
    _spatial_scale,
    validate_params,
)
from .hooks import PABHandle, apply_pab
from .presets import get_preset
from .testing import EMBEDDED_MODELS
from .tinyvideo.pipeline import TRAINED_MODELS
from .video import encode_video  # noqa: F401  (part of the pab.pipelines contract in docs/ARCHITECTURE.md)

OnStep = Callable[[int, int], None]
"""`on_step(step_index, total_steps)`, called after each denoising step; raising from it aborts the generation."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FPS_BY_PIPELINE = {"WanPipeline": 16}  # the rest of the supported families ship 8 fps
_DEFAULTS_ATTR = "_pab_generation_defaults"


class ModelLoadError(ValueError):
    """`load_pipeline` could not resolve the model name; the message lists the embedded names."""


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
