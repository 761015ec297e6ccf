"""Loading pipelines (`loading`) and running them with PAB (`generator`). Names load on first use, so that
`pab.runtime.pipelines.GenerationParams` costs no torch import."""

from __future__ import annotations

from pab._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "DTYPES": "pab.runtime.pipelines.loading",
    "ModelLoadError": "pab.runtime.pipelines.loading",
    "load_pipeline": "pab.runtime.pipelines.loading",
    "pipeline_defaults": "pab.runtime.pipelines.loading",
    "GenerationResult": "pab.runtime.pipelines.generator",
    "OnStep": "pab.runtime.pipelines.generator",
    "VideoGenerator": "pab.runtime.pipelines.generator",
    "to_uint8": "pab.runtime.pipelines.generator",
    "MAX_SEED": "pab.runtime.request.params",
    "GenerationParams": "pab.runtime.request.params",
    "GenerationParamsError": "pab.runtime.request.params",
    "validate_params": "pab.runtime.request.params",
    "encode_video": "pab.runtime.video",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
