"""Calibration: exact broadcast-fraction prediction, profile-derived windows/pyramids, and the measured search."""

import math

import pytest

from pab.runtime.tools.calibrate import (
    CalibrationError, broadcast_fraction, calibrate, candidates, sampler_timesteps, stable_window,
)
from pab.config import BroadcastRule, PABConfig
from pab.runtime.pipelines import GenerationParams, VideoGenerator
from pab.presets import get_preset
from pab.runtime.tools.profiler import AttentionProfile
from pab.runtime.tinyvideo.pipeline import random_tiny_shapes

STEPS = 8
PROMPT = "a red disc moving up"


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator(random_tiny_shapes(0))


def _u_profile() -> AttentionProfile:
    """A hand-made U: spatial 10x less stable than temporal, cross most stable; minimum at t=500."""
    ts = [900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0]
    u = [40, 10, 3, 1.5, 1, 1.2, 2.5, 8, 30]
    layers = {
        "transformer_blocks.0.attn1": {"kind": "spatial", "block": 0, "diff": [v * 1e-2 for v in u]},
        "temporal_transformer_blocks.0.attn1": {"kind": "temporal", "block": 0, "diff": [v * 1e-3 for v in u]},
        "transformer_blocks.0.attn2": {"kind": "cross", "block": 0, "diff": [v * 1e-5 for v in u]},
    }
    return AttentionProfile(ts, layers, generations=1)


def test_stable_window_follows_the_curve():
    prof = _u_profile()
    assert stable_window(prof, "spatial", 0.016) == (399.5, 600.5)  # 0.015, 0.01, 0.012 are <= 0.016
    assert stable_window(prof, "spatial", 0.03) == (299.5, 700.5)
    assert stable_window(prof, "spatial", 1.0) == (99.5, 900.5)
    assert stable_window(prof, "spatial", 0.0) == (499.5, 500.5)  # at least the minimum's own step
    assert stable_window(prof, "temporal", 0.016) == (199.5, 800.5)  # the same threshold is looser for stabler kinds
    assert stable_window(prof, "cross", 0.016) == (99.5, 900.5)
    assert stable_window(prof, "mlp", 2.0) is None


def test_candidates_are_pyramids_ordered_by_stability():
    cands = candidates(_u_profile(), factors=(3.0,), bases=(2,), gaps=(2,))
    assert len(cands) == 1
    c = cands[0]
    assert (c.spatial.range, c.temporal.range, c.cross.range) == (2, 4, 6)  # least stable gets the smallest range
    assert c.spatial.window == (299.5, 700.5)  # threshold 3 x 0.01 (the spatial floor)
    assert c.temporal.window == (99.5, 800.5) and c.cross.window == (99.5, 900.5)
    with pytest.raises(CalibrationError, match="no attention kind"):
        candidates(AttentionProfile([1.0], {}, 1))


@pytest.mark.parametrize("config", [
    get_preset("PAB-246", model="latte"),
    get_preset("PAB-579", model="latte"),
    PABConfig(spatial=BroadcastRule(3, (300, 700)), cross=BroadcastRule(4, (0, 1000)), name="custom"),
])
def test_predicted_fraction_equals_measured_hit_rate(generator, config):
    timesteps = sampler_timesteps(generator, STEPS)
    assert len(timesteps) == STEPS
    result = generator.generate(GenerationParams(prompt=PROMPT, seed=0, num_inference_steps=STEPS), pab=config)
    predicted = broadcast_fraction(config, timesteps, {"spatial": 2, "temporal": 2, "cross": 2})
    assert predicted == pytest.approx(result.stats.pab.attention.hit_rate, abs=1e-12)
    assert predicted > 0


def test_calibrate_beats_the_baseline_or_says_why(generator):
    from pab.runtime.tools.profiler import profile_generations

    def run(p, s):
        generator.generate(GenerationParams(prompt=p, seed=s, num_inference_steps=STEPS), pab="none")

    prof = profile_generations(generator.pipeline.transformer, run, [PROMPT], [0])
    res = calibrate(generator, prof, [PROMPT], [0], max_trials=3, num_inference_steps=STEPS)
    assert math.isinf(res.full.psnr) and res.baseline.broadcast > 0
    assert 1 <= len(res.trials) <= 3
    if res.config is not None:
        assert res.chosen.psnr >= res.baseline.psnr and res.chosen.broadcast > res.baseline.broadcast
        again = generator.generate(GenerationParams(prompt=PROMPT, seed=0, num_inference_steps=STEPS), pab=res.config)
        assert again.stats.pab.attention.hit_rate == pytest.approx(res.chosen.broadcast)
    else:
        assert "no candidate" in res.verdict
    impossible = calibrate(generator, prof, [PROMPT], [0], psnr_floor=1e9, max_trials=2, num_inference_steps=STEPS)
    assert impossible.config is None and "no candidate reached" in impossible.verdict
    assert len(impossible.trials) == 2
