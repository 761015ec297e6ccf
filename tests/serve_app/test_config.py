"""AppConfig validation, the checked-in serve config YAML, and the builder's deployment options (no Ray started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.entrypoints.builder import build_app, generator_options
from serve_app.config import AppConfig
from pab.runtime.request.params import RequestError
from pab.runtime.request.resolve import check_limits
from serve_app.errors import from_request_error
from serve_app.schemas import GenerationRequest

CONFIGS = Path(__file__).resolve().parents[2] / "serve_app" / "configs"


def test_default_serves_tiny_model_on_two_cpu_workers():
    config = AppConfig()
    assert (config.model, config.device, config.world_size) == ("tiny-shapes", "cpu", 2)  # the trained model
    assert config.placement_group_bundles() == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert config.resolved_api_key() is None


def test_gpu_bundles_and_degrees():
    config = AppConfig(device="cuda", sp_degree=2, cfg_degree=2, cpus_per_worker=2)
    assert config.placement_group_bundles() == [{"CPU": 2.0, "GPU": 1.0}] * 4
    options = generator_options(config)
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"] == config.placement_group_bundles()
    assert options["ray_actor_options"] == {"num_cpus": 0, "num_gpus": 0}  # the replica fits in bundle 0
    assert options["max_ongoing_requests"] == 2 * config.engine.max_batch_size  # a batch running, one queued


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"pab_preset": "PAB-999"}, "unknown preset"),
        ({"cfg_degree": 3}, "cfg_degree"),
        ({"defaults": {"frames": 8}}, "defaults: unknown field"),
        ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}, "either num_replicas or autoscaling_config"),
        ({"limits": {"max_frames": 0}}, "max_frames"),
        ({"modle": "x"}, "modle"),
    ],
)
def test_bad_config_names_the_field(fields, words):
    with pytest.raises(ValidationError, match=words):
        AppConfig(**fields)


def test_api_key_literal_or_from_environment(monkeypatch):
    assert AppConfig(api_key="s3cret").resolved_api_key() == "s3cret"
    monkeypatch.setenv("PAB_TEST_KEY", "from-env")
    assert AppConfig(api_key_env="PAB_TEST_KEY").resolved_api_key() == "from-env"
    monkeypatch.delenv("PAB_TEST_KEY")
    with pytest.raises(ValueError, match="PAB_TEST_KEY"):
        AppConfig(api_key_env="PAB_TEST_KEY").resolved_api_key()


def test_limits_name_the_limit_and_the_field():
    limits = AppConfig(limits={"max_frames": 16, "max_pixels": 1024, "max_steps": 50, "max_work": 100_000}).limits
    ok = GenerationRequest(prompt="a cat", num_frames=8, width=32, height=32, num_inference_steps=10)
    check_limits(ok, limits)
    cases = [
        ({"num_frames": 17}, "frames", "max_frames=16"),
        ({"width": 64}, "size", "max_pixels=1024"),
        ({"num_inference_steps": 51}, "steps", "max_steps=50"),
        ({"num_frames": 16, "num_inference_steps": 50}, None, "max_work=100000"),
    ]
    for change, param, words in cases:
        with pytest.raises(RequestError) as raised:
            check_limits(ok.model_copy(update=change), limits)
        error = from_request_error(raised.value)  # as the ingress answers it
        assert (error.status_code, error.param, error.code) == (400, param, "limit_exceeded")
        assert words in error.message


def test_serve_config_yaml_parses_and_builds():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load((CONFIGS / "serve_cpu.yaml").read_text()))
    app = schema.applications[0]
    assert app.import_path == "serve_app.entrypoints.builder:build_app"
    config = AppConfig.model_validate(app.args)
    assert config.world_size == 2 and config.device == "cpu"
    assert build_app(config) is not None  # binding needs no running Ray


def test_errors_survive_pickling_as_ray_ships_them():
    import pickle

    from serve_app.errors import InvalidRequestError, invalid, not_found

    for error in (invalid("frames: too many", param="frames", code="limit_exceeded"), not_found("video", "video_x")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.to_body() == error.to_body() and copy.status_code == error.status_code
    assert isinstance(invalid("x"), ValueError) and issubclass(InvalidRequestError, ValueError)


def test_card_key_changes_with_the_config_but_not_the_secret():
    base = AppConfig()
    assert base.card_key().startswith("tiny-shapes@") and base.card_key() == AppConfig().card_key()
    assert AppConfig(defaults={"num_inference_steps": 4}).card_key() != base.card_key()
    assert AppConfig(api_key="secret").card_key() == base.card_key()
