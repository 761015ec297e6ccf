"""What a request resolver must know about a served model to accept or refuse a request at once, without loading it.

A generator replica builds the card from its loaded `VideoGenerator` (`ModelCard.from_generator`) and publishes it in
the job store; the ingress reads it there and resolves every request against it (`pab.runtime.request.resolve`).
`VideoGenerator` resolves library calls against its own card, so both paths apply the same rules.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict

from pab.geometry import describe

_GEOMETRY_ATTRS = ("prompt_vocabulary",)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class SplitSpec(BaseModel):
    """How the model's forward is split over a replica's processes (`pab.parallel.ParallelHandle`)."""

    model_config = ConfigDict(frozen=True)

    model: str
    strategy: str
    sp_degree: int
    cfg_degree: int = 1


class ModelCard(BaseModel):
    r"""
    Args:
        name: The served model name clients pass as `model`.
        adapter: The PAB adapter name, or None for a model PAB cannot hook.
        defaults: Generation defaults (`num_frames`, `height`, `width`, `num_inference_steps`, `guidance_scale`,
            `fps`).
        geometry: What `pab.runtime.request.params.validate_params` checks requests against: the VAE scale
            factors, the pipeline's own pixel multiple and the VAE's decode tiles (`pab.geometry.describe`), the
            transformer config, and a closed-vocabulary model's words.
        split: The sequence-parallel split requests must fit (None on one device).
        per_sample_guidance: Whether the pipeline takes one guidance scale per sample, so requests that differ only
            in guidance scale can share a batch.
        batch_variance: Why requests of this model cannot share a batch without changing their videos (they then
            run one at a time), or None.
        image_to_video: Whether the pipeline takes a reference image (`image=` in its `__call__`), so requests may
            carry `input_reference`.
        remix: Whether the pipeline edits a video (`video=` and `strength=` in its `__call__`, as diffusers'
            video-to-video pipelines), so finished videos can be remixed.
        reference_required: Whether it cannot generate without a reference image (diffusers' image-to-video pipelines), so a
            request without `input_reference` is refused.
        created: When the card was made (whole seconds).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    adapter: str | None
    defaults: dict[str, Any]
    geometry: dict[str, Any]
    split: SplitSpec | None = None
    per_sample_guidance: bool = False
    batch_variance: str | None = None
    image_to_video: bool = False
    remix: bool = False
    reference_required: bool = False
    created: int

    @classmethod
    def from_generator(cls, name: str, generator: Any) -> "ModelCard":
        """Describe a `pab.runtime.pipelines.VideoGenerator`'s pipeline and its sequence-parallel split."""
        pipeline = generator.pipeline
        geometry = {a: getattr(pipeline, a) for a in _GEOMETRY_ATTRS if getattr(pipeline, a, None) is not None}
        geometry.update(describe(pipeline))
        geometry["transformer_config"] = {k: v for k, v in dict(pipeline.transformer.config).items() if _jsonable(v)}
        adapter = generator.adapter.name if generator.adapter is not None else None
        handle = generator.parallel
        split = None
        if handle is not None:
            split = SplitSpec(model=handle.model, strategy=handle.strategy, sp_degree=handle.config.sp_degree,
                              cfg_degree=handle.config.cfg_degree)
        return cls(name=name, adapter=adapter, defaults=dict(generator.defaults), geometry=geometry, split=split,
                   per_sample_guidance=bool(getattr(pipeline, "per_sample_guidance", False)),
                   batch_variance=generator.batch_variance, image_to_video=generator.image_to_video,
                   remix=generator.remix, reference_required=generator.reference_required,
                   created=int(time.time()))

    def pipeline_view(self) -> SimpleNamespace:
        """A stand-in with the attributes `validate_params` reads, so validation needs no weights."""
        attrs = {k: v for k, v in self.geometry.items() if k != "transformer_config"}
        return SimpleNamespace(transformer=SimpleNamespace(config=self.geometry["transformer_config"]), **attrs)

    @property
    def temporal_compression(self) -> int:
        return int(self.geometry.get("temporal_scale") or 1)

    def frames_for_seconds(self, seconds: float, fps: int) -> int:
        """The valid frame count nearest to `seconds` of video (a VAE that compresses time by k needs k*n+1, and
        one that decodes b latent frames at a time k*b*n+1)."""
        frames = max(1, round(seconds * fps))
        k = self.temporal_compression * int(self.geometry.get("decode_frame_batch") or 1)
        return max(1, round((frames - 1) / k) * k + 1) if k > 1 else frames


def seconds_label(frames: int, fps: int) -> str:
    """The Video object's `seconds` string: '1' for 8 frames at 8 fps, '1.125' for 9."""
    return f"{frames / fps:g}"
