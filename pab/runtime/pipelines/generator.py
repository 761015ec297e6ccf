"""The generation front door: validate a request against a loaded pipeline and run it with PAB.

Everything above this module (worker actors, the HTTP API, benchmarks) generates through `VideoGenerator`, so
seeding, progress reporting, PAB application and per-request PAB overrides behave the same everywhere.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from diffusers import DiffusionPipeline

from pab.adapters import UnsupportedModelError, adapter_for
from pab.config import PABConfig, PABConfigError
from pab.hooks import PABHandle, apply_pab
from pab.parallel import apply_parallel
from pab.presets import get_preset
from pab.runtime.pipelines.compile import compile_generator
from pab.runtime.pipelines.loading import call_defaults, pipeline_defaults
from pab.runtime.request.params import MAX_SEED, GenerationParams, GenerationParamsError, validate_params

OnStep = Callable[[int, int], None]
"""`on_step(step_index, total_steps)`, called after each denoising step; raising from it aborts the generation."""


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


def _call_kwargs(pipeline: DiffusionPipeline, params: GenerationParams) -> dict[str, Any]:
    """Map params onto this pipeline's `__call__` (Latte says `video_length`, CogVideoX wants its text length)."""
    accepted = call_defaults(pipeline)
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
        compile: `torch.compile` the transformer with PAB's decisions outside the compiled region: True, or a
            mapping of `pab.runtime.pipelines.compile.CompileConfig` fields; the report is `compile_report`.
    """

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        pab: PABConfig | str | Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        parallel: Any = None,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        self.pipeline = pipeline
        self.defaults = {**pipeline_defaults(pipeline), **(defaults or {})}
        self.parallel = apply_parallel(pipeline, parallel) if parallel is not None else None
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
        self.compile_report = compile_generator(self, compile) if compile else None

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
