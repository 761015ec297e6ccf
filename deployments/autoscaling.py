"""Queue-driven scaling of the generator and back-pressure at the ingress.

Autoscaling needs no custom policy. The ingress dispatches every accepted job to the generator at once as a handle
call (a job restored from the store after an ingress restart is dispatched again at start), and a replica takes up to
`max_ongoing_requests` of them (default twice `engine.max_batch_size`) into its engine, which runs them in batches.
So every job that is waiting or running is a request Serve sees: in a replica's engine, or queued at the ingress's
handle. Serve's default policy with `target_ongoing_requests=1` then asks for `waiting + running` replicas, bounded
by `min_replicas`/`max_replicas`. A job already in one replica's engine stays there when another replica starts;
only jobs dispatched after it is up reach the new replica.

Back-pressure: past `max_jobs` jobs in flight at one ingress replica (waiting + running), `POST /v1/videos` answers
429 with `Retry-After` and an OpenAI-shaped error before a job exists, so an accepted job is never dropped. Like
Serve's own `max_queued_requests`, the bound is per ingress replica (the cluster holds at most
`ingress_replicas * max_jobs` jobs).
"""

from __future__ import annotations

from typing import Any, Mapping

VIDEO_AUTOSCALING_DEFAULTS: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 4,
    # One generation per replica: one more replica for every job waiting or running.
    "target_ongoing_requests": 1,
    # Quick upscale: a video job runs for minutes, so a job that waits for a free replica waits long.
    "upscale_delay_s": 10.0,
    # Slow downscale: a new replica loads the model onto its GPUs (minutes for large models); keep it for the next
    # burst rather than paying that again.
    "downscale_delay_s": 600.0,
    "look_back_period_s": 30.0,
}


def resolve_autoscaling_config(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The video defaults with `overrides` on top, validated by Ray Serve's own `AutoscalingConfig`.

    Raises `ValueError` naming the `autoscaling_config` field that is wrong.
    """
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    merged = {**VIDEO_AUTOSCALING_DEFAULTS, **(overrides or {})}
    known = set(AutoscalingConfig.model_fields)
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"autoscaling_config: unknown field(s) {unknown}; Ray Serve accepts {sorted(known)}")
    try:
        AutoscalingConfig(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("__root__", "autoscaling_config")]
        where = f"autoscaling_config.{'.'.join(loc)}" if loc else "autoscaling_config"
        raise ValueError(f"{where}: {first.get('msg', 'invalid value')} (resolved config: {merged})") from None
    return merged
