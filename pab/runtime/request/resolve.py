"""The one request resolver: an API request + a model card + the server's limits -> a fully resolved request.

Every default is filled, the seed is drawn once, the PAB setting is parsed once (into `PABConfig.to_dict()`), and
every limit, model constraint and sequence-parallel split rule is checked once, before a job is accepted. What it
returns replays identically: workers and `VideoGenerator` run it as it is. Torch-free, so the ingress runs it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping, Protocol

from pab.config import PABConfig, PABConfigError
from pab.parallel.config import ParallelConfigError
from pab.parallel.layout import check_latents, request_latent_shape
from pab.presets import get_preset
from pab.runtime.request.api import api_name
from pab.runtime.request.card import ModelCard
from pab.runtime.request.params import MAX_SEED, GenerationParams, GenerationParamsError, RequestError, validate_params
from pab.runtime.request.request import GENERATION_FIELDS, GenerationRequest


MAX_NAME_CHARS = 64
"""Longest name a client may give its own PAB setting (metrics label it `custom` whatever it is)."""


class Limits(Protocol):
    """Upper bounds on one request (`serve_app.config.LimitsConfig`); `max_work` bounds frames x pixels x steps."""

    max_frames: int
    max_pixels: int
    max_steps: int
    max_work: int
    max_prompt_chars: int


def resolve_pab(value: Any, adapter: str | None, default: str | PABConfig = "none") -> PABConfig | None:
    """A preset name, a JSON object string, an overrides mapping on top of a preset, or a `PABConfig` -> the config
    this model runs with (None for a model without a PAB adapter). Raises `PABConfigError`."""
    if adapter is None:
        if value not in (None, "none"):
            raise PABConfigError("this model has no PAB adapter; omit pab or pass 'none'")
        return None
    if isinstance(value, PABConfig):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise PABConfigError(f"pab is not valid JSON: {exc}") from None
    if value is None:
        return default if isinstance(default, PABConfig) else get_preset(default, adapter)
    if isinstance(value, str):
        return get_preset(value, adapter)
    if not isinstance(value, Mapping):
        raise PABConfigError(f"pab must be a preset name or an object, got {type(value).__name__}")
    overrides = dict(value)
    name = overrides.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS):
        raise PABConfigError(f"name must be a string of 1 to {MAX_NAME_CHARS} characters, got {str(name)[:40]!r}")
    preset = overrides.pop("preset", None)
    base = default if preset is None else preset
    merged = (base if isinstance(base, PABConfig) else get_preset(base, adapter)).to_dict()
    for key, override in overrides.items():
        current = merged.get(key)
        merged[key] = {**current, **override} if isinstance(current, dict) and isinstance(override, dict) else override
    if "name" not in overrides:
        merged["name"] = f"{merged['name']}+custom"
    return PABConfig.from_dict(merged)


def check_limits(request: GenerationRequest, limits: Limits) -> None:
    """Raise a `limit_exceeded` `RequestError` naming the first limit a filled request exceeds."""
    pixels = request.width * request.height
    work = request.num_frames * pixels * request.num_inference_steps
    checks = (
        ("max_prompt_chars", len(request.prompt), "prompt", "prompt length in characters"),
        ("max_frames", request.num_frames, "num_frames", "frames"),
        ("max_pixels", pixels, "height", "width x height"),
        ("max_steps", request.num_inference_steps, "num_inference_steps", "steps"),
        ("max_work", work, None, "frames x width x height x steps"),
    )
    for limit, value, field, what in checks:
        bound = getattr(limits, limit)
        if value > bound:
            fix = f"reduce {api_name(field)}" if field else "reduce frames, size or steps"
            raise RequestError(
                field,
                f"{what}: {value} exceeds the limit {limit}={bound} configured for this server; {fix}",
                code="limit_exceeded",
            )


def check_split(card: ModelCard, params: GenerationParams) -> None:
    """The size must also split over the replica's ranks (`pab.parallel.layout`, the rules every forward applies)."""
    split = card.split
    if split is None:
        return
    view = card.pipeline_view()
    shape = request_latent_shape(split.model, view, view.transformer, params.num_frames, params.height, params.width)
    try:
        check_latents(split.model, split.strategy, view.transformer, split.sp_degree, shape)
    except ParallelConfigError as exc:
        raise GenerationParamsError(exc.field or "num_frames", str(exc)) from None


def refuse_reference(card: ModelCard) -> None:
    """The 400 for a reference image sent to a model without an image-to-video pipeline (the edge asks before it
    fetches or decodes anything)."""
    if not card.image_to_video:
        raise RequestError("input_reference", f"input_reference: model {card.name!r} has no image-to-video pipeline; "
                           "omit input_reference (see the model table in the README for the families that take one)")


def check_conditioning(card: ModelCard, request: GenerationRequest) -> None:
    """A reference image needs an image-to-video pipeline, a remix a video-to-video one; either must already have
    the request's size (and frames), and one request carries at most one of them."""
    reference, source = request.input_reference, request.remix
    if reference is None and source is None and card.reference_required:
        raise RequestError("input_reference", f"input_reference: model {card.name!r} generates from an image "
                           "(image-to-video) and needs one; send input_reference (the image the video starts from)")
    if reference is not None and source is not None:
        raise RequestError("input_reference", "input_reference: a remix cannot also take a reference image")
    if reference is not None:
        refuse_reference(card)
        if (reference.width, reference.height) != (request.width, request.height):
            raise RequestError("input_reference", f"input_reference: the image is {reference.width}x{reference.height} "
                               f"but the request's size is {request.width}x{request.height}; fit it to the size first")
    if source is not None:
        if not card.remix:
            raise RequestError("remix", f"model {card.name!r} has no video-to-video pipeline, so its videos cannot be "
                               "remixed (see the model table in the README for the families that can)")
        have = (source.width, source.height, source.num_frames)
        if have != (request.width, request.height, request.num_frames):
            raise RequestError("remix", f"the source video is {have[0]}x{have[1]} with {have[2]} frames but the "
                               f"request is {request.width}x{request.height} with {request.num_frames}")


def resolve(
    request: GenerationRequest,
    card: ModelCard,
    *,
    default_pab: str | PABConfig = "none",
    limits: Limits | None = None,
) -> GenerationRequest:
    """Fill, draw, parse and check `request` against `card` (and `limits`); raises one `RequestError`."""
    if request.model not in (None, card.name):
        raise RequestError("model", f"unknown model {request.model!r}; this server serves {card.name!r} "
                           "(see GET /v1/models)", code="model_not_found", status=404)
    filled: dict[str, Any] = {
        k: card.defaults[k] for k in GENERATION_FIELDS if k in card.defaults and getattr(request, k) is None
    }
    if request.seed is None:
        filled["seed"] = secrets.randbelow(MAX_SEED + 1)
    try:
        pab = resolve_pab(request.pab, card.adapter, default_pab)
    except PABConfigError as exc:
        raise RequestError("pab", f"pab: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a client's object of the wrong shape
        raise RequestError("pab", f"pab: not a PAB setting this server reads ({type(exc).__name__}: {exc}); "
                           "send a preset name or an object such as {'preset': 'PAB-246', 'spatial': {'range': 3}}") from None
    resolved = request.model_copy(update={**filled, "model": card.name, "pab": pab.to_dict() if pab else None})
    if limits is not None:
        check_limits(resolved, limits)
    params = resolved.params()
    validate_params(card.pipeline_view(), params)
    check_split(card, params)
    check_conditioning(card, resolved)
    return resolved
