"""What the ingress must know about the served model to accept or refuse a request at once, without loading it.

A generator replica builds the card from its loaded pipeline (`ModelCard.from_generator`) and publishes it in the
job store; the ingress reads it there. Both sides resolve requests with the same `ModelCard.resolve`, so a request
the ingress accepted is one the workers run, with the same defaults, seed and PAB config.
"""

from __future__ import annotations

import json
import secrets
import time
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict

from pab.config import PABConfig, PABConfigError
from pab.runtime.request.params import MAX_SEED, GenerationParams, GenerationParamsError, validate_params
from pab.presets import get_preset

from .config import LimitsConfig
from .schemas import GenerationRequest

_GEOMETRY_ATTRS = ("vae_scale_factor_spatial", "vae_scale_factor", "vae_scale_factor_temporal", "prompt_vocabulary")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class ModelCard(BaseModel):
    r"""
    Args:
        name: The served model name clients pass as `model`.
        adapter: The PAB adapter name, or None for a model PAB cannot hook.
        defaults: Generation defaults (`num_frames`, `height`, `width`, `num_inference_steps`, `guidance_scale`,
            `fps`).
        geometry: The pipeline attributes `pab.runtime.request.params.validate_params` checks requests against (VAE scale factors,
            the transformer config, and a closed-vocabulary model's words).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    adapter: str | None
    defaults: dict[str, Any]
    geometry: dict[str, Any]
    created: int

    @classmethod
    def from_generator(cls, name: str, generator: Any) -> "ModelCard":
        """Describe a `pab.runtime.pipelines.VideoGenerator`'s pipeline."""
        pipeline = generator.pipeline
        geometry = {a: getattr(pipeline, a) for a in _GEOMETRY_ATTRS if getattr(pipeline, a, None) is not None}
        geometry["transformer_config"] = {k: v for k, v in dict(pipeline.transformer.config).items() if _jsonable(v)}
        adapter = generator.adapter.name if generator.adapter is not None else None
        return cls(name=name, adapter=adapter, defaults=dict(generator.defaults), geometry=geometry, created=int(time.time()))

    def _pipeline_view(self) -> SimpleNamespace:
        """A stand-in with the attributes `validate_params` reads, so validation needs no weights."""
        attrs = {k: v for k, v in self.geometry.items() if k != "transformer_config"}
        return SimpleNamespace(transformer=SimpleNamespace(config=self.geometry["transformer_config"]), **attrs)

    @property
    def temporal_compression(self) -> int:
        return int(self.geometry.get("vae_scale_factor_temporal") or 1)

    def frames_for_seconds(self, seconds: float, fps: int) -> int:
        """The valid frame count nearest to `seconds` of video (a VAE that compresses time by k needs k*n+1)."""
        frames = max(1, round(seconds * fps))
        k = self.temporal_compression
        return max(1, round((frames - 1) / k) * k + 1) if k > 1 else frames

    def resolve_pab(self, value: str | dict[str, Any] | None, default_preset: str) -> dict[str, Any] | None:
        """A preset name, a JSON object string or an overrides dict on top of a preset -> `PABConfig.to_dict()`."""
        if self.adapter is None:
            if value not in (None, "none"):
                raise PABConfigError(f"model {self.name!r} has no PAB adapter; omit pab or pass 'none'")
            return None
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise PABConfigError(f"pab is not valid JSON: {exc}") from None
        if value is None or isinstance(value, str):
            return get_preset(value or default_preset, self.adapter).to_dict()
        if not isinstance(value, dict):
            raise PABConfigError(f"pab must be a preset name or an object, got {type(value).__name__}")
        overrides = dict(value)
        preset = overrides.pop("preset", default_preset)
        merged = get_preset(preset, self.adapter).to_dict()
        for key, override in overrides.items():
            base = merged.get(key)
            merged[key] = {**base, **override} if isinstance(base, dict) and isinstance(override, dict) else override
        if "name" not in overrides:
            merged["name"] = f"{merged['name']}+custom"
        return PABConfig.from_dict(merged).to_dict()

    def resolve(self, request: GenerationRequest, default_preset: str, limits: LimitsConfig) -> GenerationRequest:
        """
        Fill every default, draw a seed when none was given, resolve PAB, check the server's limits and that the
        model can produce exactly this size. Raises `GenerationParamsError` (naming the field), `PABConfigError`
        or a 400 `APIError` naming the limit.
        """
        if request.model not in (None, self.name):
            raise GenerationParamsError(
                "model", f"unknown model {request.model!r}; this server serves {self.name!r} (see GET /v1/models)"
            )
        filled: dict[str, Any] = {k: v for k, v in self.defaults.items() if getattr(request, k, None) is None}
        if request.seed is None:
            filled["seed"] = secrets.randbelow(MAX_SEED + 1)
        filled["model"] = self.name
        filled["pab"] = self.resolve_pab(request.pab, default_preset)
        resolved = request.model_copy(update=filled)
        limits.check(resolved)
        validate_params(self._pipeline_view(), GenerationParams(**resolved.generation_kwargs()))
        return resolved


def seconds_label(frames: int, fps: int) -> str:
    """The Video object's `seconds` string: '1' for 8 frames at 8 fps, '1.125' for 9."""
    return f"{frames / fps:g}"
