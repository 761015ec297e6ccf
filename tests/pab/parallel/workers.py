"""Code that runs inside each spawned rank (spawn imports it by module name), and the shared case definitions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pab import testing
from pab.hooks import apply_pab
from pab.parallel import ParallelConfig, apply_parallel, build_groups
from pab.parallel.schedule import forward_comm, predict_stats
from pab.presets import get_preset
from pab.stats import STAT_KINDS, PABStats

STEPS = 8
BUILDERS = {
    "latte": testing.tiny_latte_pipeline,
    "cogvideox": testing.tiny_cogvideox_pipeline,
    "wan": testing.tiny_wan_pipeline,
}


@dataclass(frozen=True)
class Case:
    model: str
    sp: int
    cfg: int
    strategy: str = "auto"
    pab: str = "none"
    guidance: float = 5.0

    @property
    def name(self) -> str:
        return f"{self.model}-sp{self.sp}-cfg{self.cfg}-{self.strategy}-{self.pab}-g{self.guidance:g}"


def call_kwargs(model: str, guidance: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(prompt="a red cat runs in the park", negative_prompt="dark", height=32, width=32,
                                  num_inference_steps=STEPS, guidance_scale=guidance, output_type="np")
    if model == "latte":
        kwargs.update(video_length=testing.LATTE_FRAMES, clean_caption=False)
    else:
        kwargs.update(num_frames=9)
    if model == "cogvideox":
        kwargs.update(max_sequence_length=16)
    return kwargs


def _table(stats: PABStats, which: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {k: (c.calls, c.bytes) for k, c in getattr(stats, which).items()}


def generate(case: Case, parallel: bool, groups_cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One generation of `case` (in parallel or on this process alone), with the counts the test compares."""
    pipe = BUILDERS[case.model](0)
    config = ParallelConfig(sp_degree=case.sp, cfg_degree=case.cfg, strategy=case.strategy, timeout_s=60)
    if parallel:
        key = (case.sp, case.cfg)
        if groups_cache is not None and key not in groups_cache:
            groups_cache[key] = build_groups(config)
        apply_parallel(pipe, config, groups_cache[key] if groups_cache is not None else None)
    handle = apply_pab(pipe.transformer, get_preset(case.pab, case.model))

    seen: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "shape" not in seen:
            seen["shape"] = tuple(kwargs["hidden_states"].shape)
            seen["text_len"] = kwargs["encoder_hidden_states"].shape[1]

    pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    steps: list[tuple[float, dict[str, int]]] = []

    def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        steps.append((float(timestep), {k: handle.stats.calls_issued(k) for k in (*STAT_KINDS, "other")}))
        return {}

    with torch.no_grad():
        video = pipe(**call_kwargs(case.model, case.guidance), generator=torch.Generator().manual_seed(7),
                     callback_on_step_end=on_step).frames[0]
    out: dict[str, Any] = {"video": np.asarray(video, dtype=np.float32)}
    if parallel:
        comm = forward_comm(pipe.transformer, config, seen["shape"], text_len=seen["text_len"], cfg_on=case.guidance > 1)
        timesteps = [t for t, _ in steps]
        pab = get_preset(case.pab, case.model)
        predicted = predict_stats(comm, timesteps, pab)
        out.update(
            issued=_table(handle.stats, "issued"),
            skipped=_table(handle.stats, "skipped"),
            predicted_issued=_table(predicted, "issued"),
            predicted_skipped=_table(predicted, "skipped"),
            steps=[calls for _, calls in steps],
            predicted_steps=[
                {k: predict_stats(comm, timesteps[: i + 1], pab).calls_issued(k) for k in (*STAT_KINDS, "other")}
                for i in range(len(timesteps))
            ],
        )
    return out


def run_cases(rank: int, cases: list[Case]) -> dict[str, Any]:
    groups: dict[Any, Any] = {}
    return {case.name: generate(case, parallel=True, groups_cache=groups) for case in cases}


def fail_mid_generation(rank: int, fail_rank: int, hold_s: float) -> str:
    """`fail_rank` raises at step 2 and stays alive (like an actor that caught it); the others must raise too."""
    pipe = BUILDERS["latte"](0)
    apply_parallel(pipe, ParallelConfig(sp_degree=2, strategy="dsp", timeout_s=hold_s / 4))

    def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if rank == fail_rank and step == 2:
            raise RuntimeError("injected failure")
        return {}

    try:
        with torch.no_grad():
            pipe(**call_kwargs("latte", 5.0), generator=torch.Generator().manual_seed(7), callback_on_step_end=on_step)
    except RuntimeError:
        if rank == fail_rank:
            time.sleep(hold_s)  # stay alive: the peers must not rely on the process dying
        raise
    return "finished"
