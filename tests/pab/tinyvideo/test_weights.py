"""The shipped trained weights: load offline through from_pretrained, reproduce the stored reference statistics."""

import json
import math

import pytest
import torch

from pab.runtime.tinyvideo.pipeline import REFERENCE, WEIGHTS_DIR, TinyVideoPipeline, load_tiny_shapes, reference_statistics


@pytest.fixture(scope="module")
def pipe():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return load_tiny_shapes()


def test_weights_are_small_safetensors_in_the_diffusers_layout():
    files = {p.relative_to(WEIGHTS_DIR).as_posix(): p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()}
    assert {"model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json", "text_encoder/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", "reference_stats.json", "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) < 8 * 2**20
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)  # no pickles shipped


def test_loads_as_the_trained_latte_model(pipe):
    assert isinstance(pipe, TinyVideoPipeline)
    cfg = pipe.transformer.config
    assert type(pipe.transformer).__name__ == "LatteTransformer3DModel"
    assert (cfg.in_channels, cfg.sample_size, cfg.patch_size, cfg.video_length) == (3, 16, 4, 4)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.num_train_timesteps == 1000  # PAB windows mean the same as for the paper's models
    assert not any(torch.isnan(p).any() for p in pipe.transformer.parameters())


def test_reference_generation_reproduces_stored_statistics(pipe):
    stored = json.loads((WEIGHTS_DIR / "reference_stats.json").read_text())
    assert {k: stored[k] for k in REFERENCE} == REFERENCE
    now = reference_statistics(pipe)
    assert now["channel_mean"] == pytest.approx(stored["channel_mean"], abs=0.01)
    assert now["channel_std"] == pytest.approx(stored["channel_std"], abs=0.01)
    for axis in ("centroid_x", "centroid_y"):
        for a, b in zip(now[axis], stored[axis]):
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 0.25, (axis, now[axis], stored[axis])
    assert (now["colour"], now["direction"]) == (stored["colour"], stored["direction"])
