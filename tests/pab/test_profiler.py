"""The attention-difference profiler: zero difference where PAB broadcast, exact averaging, JSON and PNG output."""

import json

import pytest
import torch

from pab.runtime.pipelines import GenerationParams, VideoGenerator
from pab.presets import get_preset
from pab.runtime.tools.profiler import AttentionProfile, AttentionProfiler, ProfileError, plot_profile, profile_generations
from pab.runtime.models.tiny import tiny_latte_pipeline
from pab.runtime.tinyvideo.pipeline import random_tiny_shapes

STEPS = 8


def _profile(gen: VideoGenerator, seeds, pab="none", prompt="a red disc moving up") -> AttentionProfile:
    def run(p, s):
        gen.generate(GenerationParams(prompt=p, seed=s, num_inference_steps=STEPS), pab=pab)

    return profile_generations(gen.pipeline.transformer, run, [prompt], seeds)


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator(random_tiny_shapes(0))


def test_broadcast_steps_are_exactly_zero(generator):
    config = get_preset("PAB-246", model="latte")
    prof = _profile(generator, [0], pab=config)
    assert len(prof.timesteps) == STEPS - 1
    for name, layer in prof.layers.items():
        rule = config.rule_for(layer["kind"])
        for step, (t, diff) in enumerate(zip(prof.timesteps, layer["diff"]), start=1):
            if rule.broadcasts(step, t):  # one call per pass per step: the module's counter is the step index
                assert diff == 0.0, (name, step, t)
            else:
                assert diff > 0.0, (name, step, t)
    assert any(rule.broadcasts(s, t) for s, t in enumerate(prof.timesteps, start=1)
               for rule in (config.spatial, config.temporal, config.cross))


def test_kinds_layers_and_averaging(generator):
    both = _profile(generator, [0, 1])
    one, two = _profile(generator, [0]), _profile(generator, [1])
    assert both.generations == 2 and both.kinds == ["spatial", "temporal", "cross"]
    assert len(both.layers) == 6  # 2 blocks x (spatial, temporal, cross)
    for name in both.layers:
        expect = [(a + b) / 2 for a, b in zip(one.layers[name]["diff"], two.layers[name]["diff"])]
        assert both.layers[name]["diff"] == pytest.approx(expect, rel=1e-12)
    assert all(v > 0 for v in both.kind_curve("spatial"))
    summary = both.summary()["spatial"]
    assert summary["min"] <= summary["first"] and summary["min"] <= summary["last"]


def test_json_round_trip_and_png(generator, tmp_path):
    prof = _profile(generator, [0])
    prof.save(tmp_path / "p.json")
    again = AttentionProfile.load(tmp_path / "p.json")
    assert again.layers == prof.layers and again.timesteps == prof.timesteps
    assert set(json.loads((tmp_path / "p.json").read_text())["kinds"]) == {"spatial", "temporal", "cross"}
    plot_profile(prof, tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ProfileError, match="missing"):
        AttentionProfile.load(tmp_path / "bad.json")


def test_batched_cfg_latte_pipeline():
    """A stock diffusers LattePipeline (CFG as one batched forward) profiles too: any model with an adapter."""
    gen = VideoGenerator(tiny_latte_pipeline(0))
    prof = _profile(gen, [0], prompt="a cat runs")
    assert prof.model == "LatteTransformer3DModel" and prof.kinds == ["spatial", "temporal", "cross"]
    assert len(prof.timesteps) == STEPS - 1 and all(v > 0 for v in prof.kind_curve("temporal"))


def test_nothing_recorded_is_an_error():
    pipe = random_tiny_shapes(0)
    with AttentionProfiler(pipe.transformer) as profiler:
        with pytest.raises(ProfileError, match="no attention output"):
            profiler.finish_generation()
    with pytest.raises(ProfileError, match="no finished generation"):
        profiler.profile()
    with torch.no_grad():  # hooks are gone after the with-block
        assert not pipe.transformer._forward_pre_hooks
