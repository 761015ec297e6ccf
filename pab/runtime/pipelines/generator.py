"""The generation front door: validate a request against a loaded pipeline and run it with PAB.

Everything above this module (worker actors, the HTTP API, benchmarks) generates through `VideoGenerator`, so
seeding, progress reporting, PAB application and per-request PAB overrides behave the same everywhere.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline

from pab.adapters import UnsupportedModelError, adapter_for, pipeline_transformers
from pab.config import PABConfig, PABConfigError
from pab.hooks import PABHandle, apply_pab
from pab.parallel import apply_parallel
from pab.stats import PABStats
from pab.runtime.pipelines.compile import compile_generator, resolve_compile
from pab.runtime.pipelines.loading import call_defaults, fixed_call_kwargs, pipeline_defaults
from pab.runtime.request.card import ModelCard
from pab.runtime.request.params import GenerationParams
from pab.runtime.pipelines.batching import decode_per_sample, make_batch_invariant
from pab.runtime.request.request import GenerationRequest, batch_key
from pab.runtime.request.resolve import resolve, resolve_pab
from pab.runtime.stats import GenerationStats, PABCounts, StageTimings

BATCH_VARIANT_PIPELINES: dict[str, str] = {
    "LattePipeline": "diffusers' Latte pipeline truncates a lone prompt's text embedding to its tokens but zero-pads "
    "a batch's to the longest, so a video made in a batch would differ from the same request alone",
    "WanImageToVideoPipeline": "diffusers' Wan image-to-video pipeline takes one reference image per call (a list "
    "of them is refused), so requests with their own images cannot share a denoising loop",
}
"""Pipelines whose output depends on the batch a request runs in: their requests run one at a time."""

OnStep = Callable[[int, int], None]
"""`on_step(step_index, total_steps)`, called after each denoising step; raising from it aborts the generation."""


@dataclass
class GenerationResult:
    r"""
    Args:
        frames (`np.ndarray`): uint8 [F, H, W, 3].
        stats (`GenerationStats`): PAB counts (None when the model has no PAB adapter), per-step seconds and the
            stage timings `denoise_s` (prompt encoding + denoising loop), `decode_s` (VAE decode + conversion to
            uint8) and `generate_s` (both).
        request (`GenerationRequest`): The resolved request, seed and PAB config included: rerunning it reproduces the
            frames.
    """

    frames: np.ndarray
    stats: GenerationStats
    request: GenerationRequest

    @property
    def params(self) -> GenerationParams:
        return self.request.params()

    @property
    def pab(self) -> dict[str, Any] | None:
        """`PABConfig.to_dict()` of the setting this generation ran with (None when unhooked)."""
        return self.request.pab


def _call_kwargs(pipeline: DiffusionPipeline, requests: Sequence[GenerationRequest | GenerationParams]) -> dict[str, Any]:
    """Map a batch of compatible requests onto this pipeline's `__call__` (Latte says `video_length`, CogVideoX wants
    its text length); one prompt, one seeded generator and (image-to-video) one reference image per sample."""
    accepted = call_defaults(pipeline)
    batch = [r.params() if isinstance(r, GenerationRequest) else r for r in requests]
    params = batch[0]
    scales = [p.guidance_scale for p in batch]
    kwargs: dict[str, Any] = {
        "prompt": [p.prompt for p in batch] if len(batch) > 1 else params.prompt,
        "negative_prompt": [p.negative_prompt for p in batch] if len(batch) > 1 else params.negative_prompt,
        "height": params.height,
        "width": params.width,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": scales[0] if len(set(scales)) == 1 else scales,
        "output_type": "np",
        "generator": [torch.Generator(device="cpu").manual_seed(p.seed) for p in batch] if len(batch) > 1
        else torch.Generator(device="cpu").manual_seed(params.seed),
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
    references = [getattr(r, "input_reference", None) for r in requests]
    if references[0] is not None:  # `batch_key` keeps conditioned and unconditioned requests apart
        images = [ref.pil() for ref in references]
        kwargs["image"] = images if len(images) > 1 else images[0]
    sources = [getattr(r, "remix", None) for r in requests]
    if sources[0] is not None:  # `batch_key` keeps one strength per batch
        videos = [source.pil_frames() for source in sources]
        kwargs["video"], kwargs["strength"] = videos if len(videos) > 1 else videos[0], sources[0].strength
    kwargs.update(fixed_call_kwargs(pipeline))
    return kwargs


def takes_reference_image(pipeline: DiffusionPipeline) -> bool:
    """Whether the pipeline's `__call__` takes `image=` (diffusers' image-to-video pipelines and tiny-shapes do)."""
    return "image" in inspect.signature(pipeline.__call__).parameters


def takes_source_video(pipeline: DiffusionPipeline) -> bool:
    """Whether the pipeline's `__call__` edits a video (`video=` and `strength=`, as diffusers' video-to-video
    pipelines and tiny-shapes)."""
    accepted = inspect.signature(pipeline.__call__).parameters
    return "video" in accepted and "strength" in accepted


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
        batch_invariant: compute every sample exactly as it would be computed alone (`batching`), so a video made in
            a batch is byte-identical to the same request alone; the serving workers turn it on. Off, the arithmetic
            is diffusers' own, and a batch may differ from single runs by a rounding level.
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
        batch_invariant: bool = False,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        compile_config = resolve_compile(compile, parallel)  # before any hook or process group: a config error
        self.pipeline = pipeline
        self.defaults = {**pipeline_defaults(pipeline), **(defaults or {})}
        self.batch_invariant = batch_invariant
        if batch_invariant:  # same arithmetic alone and in a batch (`batching`); off: diffusers' own, bit for bit
            # First: it replaces layers' `forward`, and the parallel and PAB hooks must wrap the replacement. After
            # them it would drop diffusers' context-parallel output gather on `proj_out` (a Linear): LTX-Video and
            # Wan under sequence parallel then returned one rank's share of the tokens (a shape error).
            for _, transformer in pipeline_transformers(pipeline):
                make_batch_invariant(transformer)
            if getattr(pipeline, "vae", None) is not None:
                decode_per_sample(pipeline.vae)
        self.parallel = apply_parallel(pipeline, parallel) if parallel is not None else None
        try:
            self.adapter = adapter_for(pipeline.transformer)
        except UnsupportedModelError:
            if pab is not None:
                raise
            self.adapter = None
        self.pab_config = self.resolve_pab(pab) if self.adapter is not None else None
        # one handle per denoising expert (Wan 2.2 A14B has two): each keeps its own counters and caches
        self._handles: list[PABHandle] = [
            apply_pab(transformer, self.pab_config, self.adapter) for _, transformer in pipeline_transformers(pipeline)
        ] if self.adapter is not None else []
        self._lock = threading.Lock()
        self._card: ModelCard | None = None
        self.compile_report = compile_generator(self, compile_config) if compile_config else None

    @property
    def pab_handle(self) -> PABHandle | None:
        """The first expert's handle (the only one for single-transformer pipelines)."""
        return self._handles[0] if self._handles else None

    @property
    def pab_handles(self) -> tuple[PABHandle, ...]:
        return tuple(self._handles)

    @property
    def batch_variance(self) -> str | None:
        """Why requests cannot share a batch without changing their videos, or None when they can."""
        reason = BATCH_VARIANT_PIPELINES.get(type(self.pipeline).__name__)
        if reason is None and not self.batch_invariant:
            reason = "batch_invariant is off, so a batched video may differ from the same request alone by a rounding level"
        return reason

    @property
    def image_to_video(self) -> bool:
        """Whether requests may carry a reference image (`input_reference`)."""
        return takes_reference_image(self.pipeline)

    @property
    def remix(self) -> bool:
        """Whether requests may carry a source video to edit (`remix`)."""
        return takes_source_video(self.pipeline)

    @property
    def reference_required(self) -> bool:
        """Whether a request must carry a reference image: diffusers' image-to-video pipelines cannot start without
        one (CogVideoX's and Wan's take it positionally, LTX-Video's fails on None); the project's own tiny-shapes
        conditions on one only when it is given."""
        return self.image_to_video and type(self.pipeline).__module__.startswith("diffusers.")

    @property
    def card(self) -> ModelCard:
        """What the resolver checks requests against (the serving layer publishes the same card)."""
        if self._card is None:
            self._card = ModelCard.from_generator(type(self.pipeline).__name__, self)
        return self._card

    def resolve_pab(self, pab: PABConfig | str | Mapping[str, Any] | None) -> PABConfig:
        """A preset name, a config mapping (on top of "none") or a config -> `PABConfig` for this model."""
        if pab is None:
            return PABConfig.disabled()
        if isinstance(pab, PABConfig):
            return pab
        if self.adapter is None:
            raise UnsupportedModelError(f"{type(self.pipeline).__name__} has no PAB adapter; use pab=None")
        if not isinstance(pab, (str, Mapping)):
            raise PABConfigError(f"pab must be a preset name, a config mapping or a PABConfig, got {type(pab).__name__}")
        return resolve_pab(pab, self.adapter.name)

    def resolve_request(
        self, params: GenerationParams | GenerationRequest, pab: PABConfig | str | Mapping[str, Any] | None = None
    ) -> GenerationRequest:
        """Resolve a library call with the serving layer's resolver (`pab.runtime.request.resolve`) on this card."""
        if isinstance(params, GenerationParams):
            params = GenerationRequest(**params.to_dict())
        if pab is not None:  # parsed here, so a library caller's bad setting is a PABConfigError
            params = params.model_copy(update={"pab": self.resolve_pab(pab).to_dict()})
        return resolve(params, self.card, default_pab=self.pab_config or "none")

    def resolve(self, params: GenerationParams) -> GenerationParams:
        """Fill `None` fields from the model defaults, draw a seed if none, and validate against the pipeline."""
        return self.resolve_request(params).params()

    def generate(
        self,
        request: GenerationParams | GenerationRequest,
        *,
        pab: PABConfig | str | Mapping[str, Any] | None = None,
        on_step: OnStep | None = None,
    ) -> GenerationResult:
        """Generate one video. A resolved `GenerationRequest` (the serving path) runs as it is; anything else is
        resolved first. `pab` overrides the default PAB setting for this request only."""
        return self.generate_batch([self._resolved(request, pab)], on_step=on_step)[0]

    def generate_batch(self, requests: Sequence[GenerationRequest], *, on_step: OnStep | None = None) -> list[GenerationResult]:
        """Generate several resolved, compatible requests in one denoising loop (one PAB schedule for all).

        Each sample keeps its own seed and prompt, and the transformer is batch-invariant, so every video is the one
        it would be alone. Raises `ValueError` when the requests do not share a `batch_key`."""
        resolved = [self._resolved(r, None) for r in requests]
        keys = {batch_key(r, per_sample_guidance=self.card.per_sample_guidance) for r in resolved}
        if len(keys) != 1:
            raise ValueError(f"a batch needs requests with one batch key (size, frames, steps, PAB, guidance); got {len(keys)}")
        if len(resolved) > 1 and type(self.pipeline).__name__ in BATCH_VARIANT_PIPELINES:
            raise ValueError(f"{type(self.pipeline).__name__} cannot batch requests: {BATCH_VARIANT_PIPELINES[type(self.pipeline).__name__]}")
        pab = resolved[0].pab
        config = PABConfig.from_dict(pab) if pab is not None else None
        with self._lock:
            frames, stats = self._run(resolved, config, on_step)
        first = resolved[0]
        expected = (first.num_frames, first.height, first.width, 3)
        if frames.shape[1:] != expected:
            raise RuntimeError(f"pipeline returned frames {frames.shape[1:]}, expected {expected}; validate_params misses a rule")
        return [GenerationResult(f, stats, r) for f, r in zip(frames, resolved)]

    def _resolved(self, request: GenerationParams | GenerationRequest, pab: Any) -> GenerationRequest:
        if isinstance(request, GenerationRequest) and request.resolved:
            if pab is not None:
                raise ValueError("a resolved request carries its PAB setting; resolve it again to change pab")
            return request
        return self.resolve_request(request, pab)

    def _run(
        self, batch: list[GenerationRequest], config: PABConfig | None, on_step: OnStep | None
    ) -> tuple[np.ndarray, GenerationStats]:
        """One pipeline call under the lock: PAB configured and reset, steps timed, stats frozen at the end."""
        config = config or PABConfig.disabled()
        for handle in self._handles:
            if handle.config != config:
                handle.configure(config)
            handle.reset()
        start = time.perf_counter()
        marks = [start]
        steps = batch[0].num_inference_steps

        def step_end(pipe: DiffusionPipeline, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            marks.append(time.perf_counter())
            if on_step is not None:
                on_step(step, pipe.num_timesteps or steps)
            return {}

        output = self.pipeline(**_call_kwargs(self.pipeline, batch), callback_on_step_end=step_end)
        frames = to_uint8(output.frames)
        end = time.perf_counter()
        timings = StageTimings(denoise_s=marks[-1] - start, decode_s=end - marks[-1], generate_s=end - start,
                               share_s=(end - start) / len(batch))
        counts = PABCounts.from_pab(combined_stats([h.stats for h in self._handles])) if self._handles else None
        step_s = tuple(b - a for a, b in zip(marks, marks[1:]))
        return frames, GenerationStats(pab=counts, step_s=step_s, timings=timings, batch_size=len(batch))


def combined_stats(parts: list[PABStats]) -> PABStats:
    """One generation's stats over several experts' handles (each counted its own modules and collectives)."""
    if len(parts) == 1:
        return parts[0]
    total = PABStats(preset=parts[0].preset)
    for part in parts:
        total.forwards += part.forwards
        total.step.add(part.step)
        for kind, counts in part.kinds.items():
            total.kinds[kind].add(counts)
        for mine, theirs in ((total.issued, part.issued), (total.skipped, part.skipped)):
            for key, counter in theirs.items():
                mine.setdefault(key, type(counter)()).add(counter.bytes, counter.calls)
    return total
