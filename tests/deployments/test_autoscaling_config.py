"""Autoscaling defaults for video and the 429 error shape, without a cluster."""

from __future__ import annotations

import pytest

from deployments.autoscaling import VIDEO_AUTOSCALING_DEFAULTS, resolve_autoscaling_config
from serve_app.errors import queue_full
from serve_app.entrypoints.builder import generator_options
from serve_app.config import AppConfig


def test_video_defaults_scale_on_every_waiting_or_running_job_up_fast_down_slow() -> None:
    resolved = resolve_autoscaling_config({})
    assert resolved["target_ongoing_requests"] == 1
    assert resolved["upscale_delay_s"] < resolved["downscale_delay_s"]
    from ray.serve.config import AutoscalingConfig

    ray_default = AutoscalingConfig()
    assert resolved["upscale_delay_s"] < ray_default.upscale_delay_s  # quicker than Serve's generic default


def test_app_config_overrides_win_and_reach_the_deployment_options() -> None:
    config = AppConfig(autoscaling_config={"max_replicas": 6, "downscale_delay_s": 60})
    options = generator_options(config)
    assert "num_replicas" not in options
    assert options["max_ongoing_requests"] == 2 * config.engine.max_batch_size
    assert options["autoscaling_config"] == {**VIDEO_AUTOSCALING_DEFAULTS, "max_replicas": 6, "downscale_delay_s": 60}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"min_replicas": 5, "max_replicas": 2}, "max_replicas (2) must be greater than or equal to min_replicas (5)"),
        ({"upscale_delay_s": -1}, "autoscaling_config.upscale_delay_s"),
        ({"max_replica": 3}, "unknown field(s) ['max_replica']"),
    ],
)
def test_bad_autoscaling_config_names_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_autoscaling_config(overrides)
    assert message in str(info.value)


def test_queue_full_error_is_openai_shaped_with_retry_after() -> None:
    error = queue_full(in_flight=5, max_jobs=5, retry_after_s=7)
    assert error.status_code == 429 and error.headers == {"Retry-After": "7"}
    body = error.to_body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "rate_limit_exceeded" and "queue.max_jobs=5" in body["message"]
