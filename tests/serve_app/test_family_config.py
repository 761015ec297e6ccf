"""A parallel setting the model's family cannot run is refused when the server is configured (AppConfig, so `pab
serve`, `build_app`, `serve run` and serve YAMLs alike), naming the field, not by replicas failing to start."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pab.runtime.models.families import EMBEDDED_TRANSFORMERS
from serve_app.config import AppConfig


@pytest.mark.parametrize("model,degrees,field,words", [
    ("tiny-hunyuan", {"sp_degree": 2}, "sp_degree", "sequence parallel is not available for hunyuanvideo"),
    ("tiny-allegro", {"sp_degree": 2}, "sp_degree", "cfg_degree=2 works for it"),
    ("tiny-mochi", {"sp_degree": 4}, "sp_degree", "sequence parallel runs on ['cogvideox', 'latte', 'ltx-video', 'wan']"),
    ("tiny-hunyuan", {"sp_degree": 1, "cfg_degree": 2}, "cfg_degree", "guidance is distilled"),
])
def test_unsupported_parallel_settings_are_config_errors(model, degrees, field, words):
    with pytest.raises(ValidationError) as raised:
        AppConfig(model=model, **degrees)
    message = str(raised.value)
    assert f"{field}: model {model!r}" in message and words in message


@pytest.mark.parametrize("model,degrees", [
    ("tiny-allegro", {"sp_degree": 1, "cfg_degree": 2}), ("tiny-mochi", {"sp_degree": 1, "cfg_degree": 2}),
    ("tiny-hunyuan", {"sp_degree": 1}), ("tiny-ltx-i2v", {"sp_degree": 2}), ("tiny-wan-i2v", {"sp_degree": 2, "cfg_degree": 2}),
    ("some-org/unknown-hub-model", {"sp_degree": 2}),  # its family is known once loaded: the workers check then
])
def test_supported_settings_and_unknown_families_pass(model, degrees):
    assert AppConfig(model=model, **degrees).world_size == degrees["sp_degree"] * degrees.get("cfg_degree", 1)


def test_a_saved_pipeline_directory_is_checked_by_its_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "MochiPipeline", "transformer": ["diffusers", EMBEDDED_TRANSFORMERS["tiny-mochi"]]}))
    with pytest.raises(ValidationError, match="sp_degree: .*not available for mochi"):
        AppConfig(model=str(tmp_path), sp_degree=2)
    assert AppConfig(model=str(tmp_path), sp_degree=1, cfg_degree=2).world_size == 2
