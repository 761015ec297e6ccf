"""Loading video pipelines: the embedded models by name (`pab.runtime.models.registry`), anything else through
diffusers' `from_pretrained`; and the generation defaults of a loaded pipeline."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import DiffusionPipeline

from pab.geometry import spatial_scale
from pab.runtime.models.compat import ensure_prompt_cleaning
from pab.runtime.models.registry import EMBEDDED_MODELS

ensure_prompt_cleaning()  # also for hub pipelines, before any of them is called

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FPS_BY_PIPELINE = {"WanPipeline": 16, "HunyuanVideoPipeline": 24, "AllegroPipeline": 15, "MochiPipeline": 30,
                    "LTXPipeline": 24}  # Latte and CogVideoX ship 8 fps
_DEFAULTS_ATTR = "_pab_generation_defaults"
_CALL_KWARGS_ATTR = "_pab_call_kwargs"
_TILED_ONLY_VAES = ("AutoencoderKLAllegro",)  # diffusers implements their decode only tiled


class ModelLoadError(ValueError):
    """`load_pipeline` could not resolve the model name; the message lists the embedded names."""


def load_pipeline(model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None) -> DiffusionPipeline:
    """
    Load an embedded tiny model by name (`pab.runtime.models.registry.EMBEDDED_MODELS`), else `DiffusionPipeline.from_pretrained`
    (a local directory, or a hub id when the hub is reachable).
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    entry = EMBEDDED_MODELS.get(model)
    if entry is not None:
        pipeline = entry.build()
        setattr(pipeline, _DEFAULTS_ATTR, entry.defaults())
        setattr(pipeline, _CALL_KWARGS_ATTR, dict(entry.call_kwargs))
    else:
        try:
            pipeline = DiffusionPipeline.from_pretrained(model, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model {model!r} is not an embedded model ({sorted(EMBEDDED_MODELS)}) and "
                f"from_pretrained failed: "
                f"{exc}. Pass a directory saved with save_pretrained, or a hub id with the hub reachable."
            ) from exc
        pipeline.set_progress_bar_config(disable=True)
    if type(getattr(pipeline, "vae", None)).__name__ in _TILED_ONLY_VAES:
        pipeline.vae.enable_tiling()
    return pipeline.to(device, dtype) if dtype is not None and _needs_cast(pipeline, dtype) else pipeline.to(device)


def _needs_cast(pipeline: DiffusionPipeline, dtype: torch.dtype) -> bool:
    """Whether a component holds weights of another dtype. Casting only then also keeps diffusers 0.42 quiet: it
    warns about "modules that should be kept in float32: []" on every `.to(dtype)`, even with none to keep."""
    modules = [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]
    return any(p.dtype != dtype for m in modules for p in m.parameters())


def fixed_call_kwargs(pipeline: DiffusionPipeline) -> dict[str, Any]:
    """Pipeline `__call__` arguments the loaded model needs on every call (`EmbeddedModel.call_kwargs`)."""
    return dict(getattr(pipeline, _CALL_KWARGS_ATTR, None) or {})


def call_defaults(pipeline: DiffusionPipeline) -> dict[str, Any]:
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
    call = call_defaults(pipeline)
    config = pipeline.transformer.config
    scale = spatial_scale(pipeline)
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
