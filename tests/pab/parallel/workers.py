"""Code that runs inside each spawned rank (spawn imports it by module name), and the shared case definitions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pab.runtime.models import tiny as testing
from pab.hooks import apply_pab
from pab.parallel import ParallelConfig, apply_parallel, build_groups
from pab.parallel.schedule import forward_comm, predict_stats
from pab.presets import get_preset
from pab.stats import STAT_KINDS, PABStats

STEPS = 6
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
    size: int = 32

    @property
    def name(self) -> str:
        return f"{self.model}-sp{self.sp}-cfg{self.cfg}-{self.strategy}-{self.pab}-g{self.guidance:g}-{self.size}px"


def call_kwargs(model: str, guidance: float, size: int = 32) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(prompt="a red cat runs in the park", negative_prompt="dark", height=size, width=size,
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
        video = pipe(**call_kwargs(case.model, case.guidance, case.size), generator=torch.Generator().manual_seed(7),
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


def _error(fn: Any) -> tuple[str, str | None, str]:
    try:
        fn()
    except Exception as exc:  # the test checks type, field and message
        return type(exc).__name__, getattr(exc, "field", None), str(exc)
    return "no error", None, ""


def shape_errors() -> dict[str, tuple[str, str | None, str]]:
    """Shapes a 2-rank split cannot take: each must raise a clear error on every rank before any collective."""
    from diffusers import LatteTransformer3DModel

    sp2 = ParallelConfig(sp_degree=2, timeout_s=60)
    out = {}
    latte = testing.tiny_latte_transformer(0)
    handle = apply_parallel(latte, ParallelConfig(sp_degree=2, strategy="dsp", timeout_s=60))
    x = dict(timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 5, testing.TEXT_DIM), return_dict=False)
    out["latte_odd_frames"] = _error(lambda: latte(hidden_states=torch.randn(1, 4, 7, 16, 16), **x))
    out["latte_one_frame_per_rank"] = _error(lambda: latte(hidden_states=torch.randn(1, 4, 2, 16, 16), **x))
    handle.remove()
    three_heads = LatteTransformer3DModel(num_attention_heads=3, attention_head_dim=8, in_channels=4, num_layers=1,
                                          cross_attention_dim=24, sample_size=8, patch_size=2, norm_type="ada_norm_single",
                                          num_embeds_ada_norm=1000, caption_channels=testing.TEXT_DIM, video_length=4)
    out["ulysses_heads"] = _error(lambda: apply_parallel(three_heads, ParallelConfig(sp_degree=2, strategy="ulysses")))
    wan_pipe = testing.tiny_wan_pipeline(0)
    handle = apply_parallel(wan_pipe, sp2)
    out["wan_request"] = _error(lambda: handle.validate_request(wan_pipe, 9, 24, 24))
    out["wan_request_ok"] = _error(lambda: handle.validate_request(wan_pipe, 9, 32, 32))
    handle.remove()
    wan = testing.tiny_wan_transformer(0)
    handle = apply_parallel(wan, sp2)
    out["wan_forward"] = _error(lambda: wan(hidden_states=torch.randn(1, 4, 1, 6, 6), timestep=torch.tensor([500]),
                                            encoder_hidden_states=torch.randn(1, 6, testing.TEXT_DIM), return_dict=False))
    handle.remove()
    out["cogvideox_dsp"] = _error(lambda: apply_parallel(testing.tiny_cogvideox_transformer(0),
                                                         ParallelConfig(sp_degree=2, strategy="dsp")))
    out["wan_cfg_without_pipeline"] = _error(lambda: apply_parallel(testing.tiny_wan_transformer(0),
                                                                    ParallelConfig(cfg_degree=2)))
    from pab.runtime.pipelines import GenerationParams, VideoGenerator

    gen = VideoGenerator(testing.tiny_wan_pipeline(0), parallel=sp2)
    out["generator_request"] = _error(lambda: gen.resolve(GenerationParams(prompt="a cat", num_frames=9, height=24, width=24, seed=1)))
    out["world_mismatch"] = _error(lambda: apply_parallel(testing.tiny_latte_transformer(0), ParallelConfig(sp_degree=4)))
    return out


def video_generator(parallel: ParallelConfig | None) -> dict[str, Any]:
    """The serving front door with parallel= set: frames and the stats dict it reports."""
    from pab.runtime.pipelines import GenerationParams, VideoGenerator

    gen = VideoGenerator(testing.tiny_latte_pipeline(0), pab="PAB-246", parallel=parallel)
    result = gen.generate(GenerationParams(prompt="a dog swims in the lake", seed=3, num_inference_steps=STEPS))
    return {"frames": result.frames, "stats": result.stats.pab.model_dump()}


def run_cases(rank: int, cases: list[Case], extras: bool = False) -> dict[str, Any]:
    groups: dict[Any, Any] = {}
    out: dict[str, Any] = {}
    if extras:  # errors first: the cases after them prove the group is still in step
        out["errors"] = shape_errors()
        out["generator"] = video_generator(ParallelConfig(sp_degree=2, timeout_s=60))
    out.update({case.name: generate(case, parallel=True, groups_cache=groups) for case in cases})
    return out


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
