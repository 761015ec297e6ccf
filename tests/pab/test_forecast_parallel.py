"""Forecast and step-level broadcast under DSP sequence parallel (Latte, 2 gloo ranks): the video equals the single
process one, a forecast attention skips its all-to-all like a reused one, and a skipped step skips every collective
a computed step issues.

    ../shared/bin/loopback-only .venv/bin/python -m pytest tests/pab/test_forecast_parallel.py
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from pab.hooks import apply_pab
from pab.parallel import ParallelConfig, apply_parallel, build_groups
from pab.parallel.launch import run_ranks
from pab.parallel.schedule import forward_comm, predict_stats
from pab.presets import get_preset
from pab.runtime.models.tiny import tiny_latte_pipeline

from .parallel.workers import call_kwargs

pytestmark = pytest.mark.slow  # one ~30 s start-up of 2 rank processes
PRESETS = ("PAB-246f", "step3f", "PAB-333f")


def _table(stats: Any, which: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {k: (c.calls, c.bytes) for k, c in getattr(stats, which).items()}


def generate(preset: str, groups: Any = None) -> dict[str, Any]:
    pipe = tiny_latte_pipeline(0)
    config = ParallelConfig(sp_degree=2, strategy="dsp", timeout_s=60)
    if groups is not None:
        apply_parallel(pipe, config, groups)
    handle = apply_pab(pipe.transformer, get_preset(preset, model="latte"))
    seen: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.setdefault("shape", (tuple(kwargs["hidden_states"].shape), kwargs["encoder_hidden_states"].shape[1]))

    pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    timesteps: list[float] = []

    def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        timesteps.append(float(timestep))
        return {}

    with torch.no_grad():
        video = pipe(**call_kwargs("latte", 5.0), generator=torch.Generator().manual_seed(7),
                     callback_on_step_end=on_step).frames[0]
    out = {"video": np.asarray(video, dtype=np.float32), "stats": handle.stats.to_dict()}
    if groups is not None:
        comm = forward_comm(pipe.transformer, config, seen["shape"][0], text_len=seen["shape"][1], cfg_on=True)
        reuse_schedule = get_preset(preset.rstrip("f"), model="latte")  # forecasting keeps the reuse schedule
        predicted = predict_stats(comm, timesteps, reuse_schedule)
        out.update(issued=_table(handle.stats, "issued"), skipped=_table(handle.stats, "skipped"),
                   predicted_issued=_table(predicted, "issued"), predicted_skipped=_table(predicted, "skipped"))
    return out


def run_presets(rank: int) -> dict[str, Any]:
    groups = build_groups(ParallelConfig(sp_degree=2, timeout_s=60))
    return {preset: generate(preset, groups) for preset in PRESETS}


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    outcomes = run_ranks(run_presets, 2, timeout_s=60)
    failed = [o for o in outcomes if not o.ok]
    assert not failed, "\n".join(f"rank {o.rank}: {o.error}" for o in failed)
    return [o.value for o in outcomes]


@pytest.mark.parametrize("preset", PRESETS)
def test_parallel_video_equals_single_process(ranks, preset):
    expected = generate(preset)["video"]
    for value in ranks:
        np.testing.assert_allclose(value[preset]["video"], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["PAB-246f", "PAB-333f"])
def test_forecast_attention_skips_its_collectives(ranks, preset):
    for value in ranks:
        r = value[preset]
        assert r["stats"]["attention"]["forecast"] > 0
        assert r["issued"] == r["predicted_issued"] and r["skipped"] == r["predicted_skipped"]
        assert r["skipped"][("temporal", "all_to_all")][1] > 0


def test_skipped_step_skips_what_a_computed_step_issues(ranks):
    for value in ranks:
        r = value["step3f"]
        step = r["stats"]["step"]
        assert step["broadcast"] > 0 and step["forecast"] > 0
        assert set(r["skipped"]) == set(r["issued"])
        for key, (calls, nbytes) in r["issued"].items():
            skipped_calls, skipped_bytes = r["skipped"][key]
            assert calls * step["broadcast"] == skipped_calls * step["computed"], key
            assert nbytes * step["broadcast"] == skipped_bytes * step["computed"], key
