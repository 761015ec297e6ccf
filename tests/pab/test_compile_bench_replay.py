"""`bench/compile_speed.py --per-call` replays recorded transformer calls instead of running the pipeline: the replay
must be what the pipeline does to the transformer, or its ratios time something else. Checked eagerly (no compile):
PAB's decisions and counts over a replayed generation equal those of the pipeline's own run, and every variant is
timed once per call per round."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from pab.hooks import ROOT_HOOK

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def compile_speed():
    sys.path.insert(0, str(BENCH))
    try:
        import compile_speed

        yield compile_speed
    finally:
        sys.path.remove(str(BENCH))


def test_a_replayed_generation_makes_the_pipelines_pab_decisions(compile_speed) -> None:
    from pab.runtime.tinyvideo.data import HELD_OUT, caption

    make = compile_speed.tiny_shapes_runner(Namespace(steps=6, guidance_scale=3.0))
    items = [(caption(*HELD_OUT[0]), 0), (caption(*HELD_OUT[1]), 1)]
    generations = compile_speed.record_calls(make, items)
    assert [len(calls) for calls in generations] == [12, 12]  # 6 steps x 2 CFG passes each
    assert {name for calls in generations for name, _, _ in calls} == {"cond", "uncond"}

    with torch.no_grad():
        piped, run = make()
        compile_speed.prepare(piped, "PAB-246", None, None, "full")
        run(items[0])
        expected = piped._diffusers_hook.get_hook(ROOT_HOOK).state.stats.to_dict()

        replayed, _ = make()
        compile_speed.prepare(replayed, "PAB-246", None, None, "full")
        compile_speed.interleave_calls({"eager PAB-246": replayed}, generations[:1], rounds=1)
        assert replayed._diffusers_hook.get_hook(ROOT_HOOK).state.stats.to_dict() == expected
        assert expected["kinds"]["cross"]["broadcast"] > 0  # the comparison covers broadcasts, not only computes


def test_every_variant_is_timed_each_round(compile_speed) -> None:
    from pab.runtime.tinyvideo.data import HELD_OUT, caption

    make = compile_speed.tiny_shapes_runner(Namespace(steps=2, guidance_scale=3.0))
    generations = compile_speed.record_calls(make, [(caption(*HELD_OUT[0]), 0)])
    models = {}
    for name in ("eager none", "eager PAB-246"):
        models[name], _ = make()
        compile_speed.prepare(models[name], *compile_speed.VARIANTS[name])
    with torch.no_grad():
        times = compile_speed.interleave_calls(models, generations, rounds=2)
    assert set(times) == {"cpu", "wall"}
    assert all(len(ts) == 2 and all(t > 0 for t in ts) for clock in times.values() for ts in clock.values())
