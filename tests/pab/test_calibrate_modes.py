"""Calibration over forecast and step-level modes: the replayed cost, the per-family search and the frontier."""

import json

import pytest

from pab.config import BroadcastRule, PABConfig
from pab.presets import get_preset
from pab.runtime.pipelines import GenerationParams, VideoGenerator
from pab.runtime.tinyvideo.pipeline import random_tiny_shapes
from pab.runtime.tools.calibrate import (
    MODES, CalibrationError, broadcast_fraction, calibrate, estimated_cost, forecasting, sampler_timesteps,
    schedule_error, step_candidates,
)
from pab.runtime.tools.profiler import AttentionProfile
from pab.runtime.tools.cli import main

from .test_calibrate import PROMPT, _u_profile

STEPS = 8
MODULES = {"spatial": 2, "temporal": 2, "cross": 2}


@pytest.fixture(scope="module")
def generator():
    return VideoGenerator(random_tiny_shapes(0))


@pytest.mark.parametrize("config", [
    get_preset("step3f", model="latte"),
    PABConfig(step=BroadcastRule(2, (0, 1000)), spatial=BroadcastRule(2, (0, 1000))),
    get_preset("PAB-246", model="latte"),
])
def test_replayed_cost_matches_what_the_hooks_did(generator, config):
    timesteps = sampler_timesteps(generator, STEPS)
    stats = generator.generate(GenerationParams(prompt=PROMPT, seed=0, num_inference_steps=STEPS), pab=config).stats.pab.model_dump()
    ran = stats["step"]["computed"] / stats["forwards"] if config.step else 1.0
    share = 0.4
    cost = estimated_cost(config, timesteps, MODULES, attention_share=share)
    # on the forwards that ran, the attention computed is what was not broadcast by the per-module rules
    ran_attention_computed = (stats["attention"]["computed"] / (6 * stats["forwards"])) / ran
    assert cost == pytest.approx(ran * (1 - share * (1 - ran_attention_computed)), abs=1e-12)
    if config.step is None:
        assert cost == pytest.approx(1 - share * broadcast_fraction(config, timesteps, MODULES), abs=1e-12)
    else:
        assert ran < 1


def test_forecast_and_step_families_are_built_from_the_profile():
    prof = _u_profile()
    steps = step_candidates(prof)
    assert steps and all(c.step is not None and c.spatial is None and c.step.forecast_order == 0 for c in steps)
    assert {c.step.range for c in steps} == {2, 3, 4}
    assert any(c.step.window[0] == 0.0 for c in steps) and any(c.step.window[0] > 0 for c in steps)
    assert {c.step.forecast_order for c in step_candidates(prof, orders=(1,))} == {1}
    pyramid = PABConfig(spatial=BroadcastRule(2, (300, 700)), cross=BroadcastRule(6, (100, 900)), name="calibrated(x)")
    (fc,) = forecasting([pyramid])
    assert fc.spatial == BroadcastRule(2, (300, 700), 1) and fc.cross.forecast_order == 1 and fc.temporal is None


def test_schedule_error_prefers_skipping_where_outputs_move_least_or_most_linearly():
    prof = _u_profile()  # U-shaped change, minimum at t=500
    ts = [1000.0, *prof.timesteps]
    near_floor = PABConfig(step=BroadcastRule(2, (350, 650)))
    early = PABConfig(step=BroadcastRule(2, (650, 950)))
    assert 0 < schedule_error(near_floor, prof, ts) < schedule_error(early, prof, ts)
    assert schedule_error(PABConfig(), prof, ts) == 0.0
    steady = AttentionProfile(prof.timesteps, {"a": {"kind": "spatial", "block": 0, "diff": [4.0] * 9}}, 1)
    reuse, line = PABConfig(step=BroadcastRule(3, (0, 1000))), PABConfig(step=BroadcastRule(3, (0, 1000), 1))
    # RMS change 2 per step; range 3 skips 2 of every 3 forwards: each pair of skips has moved 2, then 4
    assert schedule_error(reuse, steady, ts) == pytest.approx(3 * (2 + 4))
    # a constant change per step is a line: once a forecast has two points (after the first pair) it loses nothing
    assert schedule_error(line, steady, ts) == pytest.approx(2 + 2)


def test_calibrate_searches_every_mode_and_reports_a_frontier(generator):
    from pab.runtime.tools.profiler import profile_generations

    def run(p, s):
        generator.generate(GenerationParams(prompt=p, seed=s, num_inference_steps=STEPS), pab="none")

    prof = profile_generations(generator.pipeline.transformer, run, [PROMPT], [0])
    res = calibrate(generator, prof, [PROMPT], [0], max_trials=8, num_inference_steps=STEPS, modes=MODES,
                    psnr_floor=20.0)
    assert 4 <= len(res.trials) <= 8  # one bisection step per family at least
    kinds = {("step" if t.config["step"] else "pyramid") + ("-f" if "f1" in t.name or "o1" in t.name else "")
             for t in res.trials}
    assert kinds == {"pyramid", "pyramid-f", "step", "step-f"}
    costs = [r["cost"] for r in res.frontier]
    psnrs = [r["psnr"] for r in res.frontier]
    assert costs == sorted(costs) and psnrs == sorted(psnrs) and len(set(psnrs)) == len(psnrs)
    assert res.frontier[-1]["name"] == "full (no PAB)" and res.frontier[-1]["cost"] == 1.0
    if res.config is not None:
        assert res.chosen.psnr >= 20.0
        assert json.loads(json.dumps(res.to_dict()))["frontier"] == res.frontier
    with pytest.raises(CalibrationError, match="modes"):
        calibrate(generator, prof, [PROMPT], [0], max_trials=1, num_inference_steps=STEPS, modes=("steps",))


def test_cli_calibrate_prints_the_frontier(tmp_path, capsys):
    common = ["--model", "tiny-latte", "--prompt", "a cat runs", "--seeds", "0", "--steps", "6"]
    prof = tmp_path / "p.json"
    assert main(["profile", *common, "-o", str(prof)]) == 0
    code = main(["calibrate", *common, "--profile", str(prof), "--max-trials", "4", "--modes", "step",
                 "step-forecast", "-o", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert code in (0, 1) and "measured frontier" in out and "full (no PAB)" in out
    report = json.loads((tmp_path / "c.report.json").read_text())
    assert all(t["config"]["step"] is not None for t in report["trials"])
