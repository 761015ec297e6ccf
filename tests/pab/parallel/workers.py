"""Code that runs inside each spawned rank (spawn imports it by module name), and the shared case definitions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pab.adapters import pipeline_transformers
from pab.hooks import apply_pab
from pab.parallel import ParallelConfig, apply_parallel, build_groups
from pab.config import PABConfig
from pab.parallel.schedule import forward_comm, predict_stats
from pab.presets import get_preset
from pab.runtime.models import tiny as testing
from pab.runtime.pipelines import GenerationParams, VideoGenerator, load_pipeline
from pab.runtime.pipelines.generator import combined_stats
from pab.runtime.request.conditioning import ReferenceImage
from pab.runtime.request.request import GenerationRequest
from pab.stats import STAT_KINDS, PABStats

STEPS = 6
BUILDERS = {
    "latte": testing.tiny_latte_pipeline,
    "cogvideox": testing.tiny_cogvideox_pipeline,
    "wan": testing.tiny_wan_pipeline,
    "wan22": testing.tiny_wan22_pipeline,
    "ltx-video": testing.tiny_ltx_pipeline,
    "allegro": testing.tiny_allegro_pipeline,
    "mochi": testing.tiny_mochi_pipeline,
    "wan-i2v": testing.tiny_wan_i2v_pipeline,
    "cogvideox-i2v": testing.tiny_cogvideox_i2v_pipeline,
    "ltx-i2v": testing.tiny_ltx_i2v_pipeline,
}
ADAPTER = {"wan22": "wan", "wan-i2v": "wan", "cogvideox-i2v": "cogvideox", "ltx-i2v": "ltx-video"}
"""The model key of a case -> its adapter (presets, schedule), where they differ."""
IMAGE_TO_VIDEO = ("wan-i2v", "cogvideox-i2v", "ltx-i2v")


def reference_image(size: int) -> Any:
    """The PIL reference image every rank conditions an image-to-video case on (same pixels on every rank)."""
    from PIL import Image

    return Image.fromarray(np.random.default_rng(11).integers(0, 256, (size, size, 3), dtype=np.uint8))


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
        kwargs.update(num_frames={"mochi": 7, "allegro": testing.ALLEGRO_FRAMES}.get(model, 9))
    if model == "cogvideox":
        kwargs.update(max_sequence_length=16)
    if model == "allegro":
        kwargs.update(clean_caption=False, height=testing.ALLEGRO_SIZE, width=testing.ALLEGRO_SIZE)
    if model in ("ltx-video", "mochi", "allegro", "ltx-i2v"):
        kwargs.update(max_sequence_length=testing.TEXT_TOKENS)
    if model == "cogvideox-i2v":
        kwargs.update(max_sequence_length=16)
    if model in IMAGE_TO_VIDEO:
        kwargs.update(image=reference_image(size))
    return kwargs


def _capture_input(transformer: torch.nn.Module) -> dict[str, Any]:
    """The first forward's latent shape and text length, as the pipeline passes them (before any split)."""
    seen: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "shape" not in seen:
            seen["shape"] = tuple(kwargs["hidden_states"].shape)
            seen["text_len"] = kwargs["encoder_hidden_states"].shape[1]

    transformer.register_forward_pre_hook(capture, with_kwargs=True)
    return seen


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
    pab = get_preset(case.pab, ADAPTER.get(case.model, case.model))
    handles = [apply_pab(t, pab) for _, t in pipeline_transformers(pipe)]

    def stats() -> PABStats:
        return combined_stats([h.stats for h in handles])

    seen = _capture_input(pipe.transformer)
    steps: list[tuple[float, dict[str, int]]] = []

    def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        steps.append((float(timestep), {k: stats().calls_issued(k) for k in (*STAT_KINDS, "other")}))
        return {}

    with torch.no_grad():
        video = pipe(**call_kwargs(case.model, case.guidance, case.size), generator=torch.Generator().manual_seed(7),
                     callback_on_step_end=on_step).frames[0]
    out: dict[str, Any] = {"video": np.asarray(video, dtype=np.float32)}
    if parallel:
        predicted, per_step = _predict(pipe, config, pab, case.guidance > 1, seen, [t for t, _ in steps])
        out.update(issued=_table(stats(), "issued"), skipped=_table(stats(), "skipped"),
                   predicted_issued=_table(predicted, "issued"), predicted_skipped=_table(predicted, "skipped"),
                   steps=[calls for _, calls in steps], predicted_steps=per_step)
    return out


def _predict(pipe: Any, config: ParallelConfig, pab: PABConfig, cfg_on: bool, seen: dict[str, Any],
             timesteps: list[float]) -> tuple[PABStats, list[dict[str, int]]]:
    """What `pab.parallel.schedule` predicts this rank sends, without running anything: the generation's collectives
    and, after each step, the calls issued so far per kind."""
    comm = forward_comm(pipe.transformer, config, seen["shape"], text_len=seen["text_len"], cfg_on=cfg_on)
    ratio = getattr(pipe.config, "boundary_ratio", None)
    boundary = ratio * pipe.scheduler.config.num_train_timesteps if ratio is not None else None
    per_step = [{k: predict_stats(comm, timesteps[: i + 1], pab, boundary).calls_issued(k) for k in (*STAT_KINDS, "other")}
                for i in range(len(timesteps))]
    return predict_stats(comm, timesteps, pab, boundary), per_step


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
    # A size every check before the split accepts (Latte also takes single frames), that Latte's frame split cannot:
    # with WanPipeline's multiples of 16 px, every Wan video splits over 2 or 4 ranks.
    gen = VideoGenerator(testing.tiny_latte_pipeline(0), parallel=sp2)
    out["generator_request"] = _error(lambda: gen.resolve(GenerationParams(prompt="a cat", num_frames=1, seed=1)))
    out["world_mismatch"] = _error(lambda: apply_parallel(testing.tiny_latte_transformer(0), ParallelConfig(sp_degree=4)))
    return out


GENERATOR_MODELS = {"latte": "tiny-latte", "ltx-video": "tiny-ltx", "wan22": "tiny-wan22", "wan-i2v": "tiny-wan-i2v",
                    "ltx-i2v": "tiny-ltx-i2v"}
"""Families run through the serving front door with sequence parallel (model key -> embedded model)."""
BATCH_INVARIANT_MODELS = ("ltx-video", "wan22", "ltx-i2v")
"""...and again as the serving workers run them (`batch_invariant=True`, diffusers' context parallel underneath)."""


def video_generator(model: str, parallel: ParallelConfig | None, batch_invariant: bool = False) -> dict[str, Any]:
    """The serving front door with parallel= set: frames, the stats dict it reports and the schedule's prediction;
    image-to-video models get a `ReferenceImage` as a served request carries it."""
    gen = VideoGenerator(load_pipeline(GENERATOR_MODELS[model]), pab="PAB-246", parallel=parallel,
                         batch_invariant=batch_invariant)
    seen = _capture_input(gen.pipeline.transformer)
    reference = None
    if model in IMAGE_TO_VIDEO:
        reference = ReferenceImage.from_rgb(np.asarray(reference_image(gen.defaults["width"])))
    result = gen.generate(GenerationRequest(prompt="a dog swims in the lake", seed=3, num_inference_steps=STEPS,
                                            input_reference=reference))
    out = {"frames": result.frames, "stats": result.stats.pab.model_dump()}
    if parallel is not None:
        timesteps = [float(t) for t in gen.pipeline.scheduler.timesteps]
        predicted, _ = _predict(gen.pipeline, parallel, gen.pab_config, result.params.guidance_scale > 1, seen, timesteps)
        out["predicted_comm"] = predicted.to_dict()["comm"]
    return out


def run_cases(rank: int, cases: list[Case], extras: bool = False) -> dict[str, Any]:
    groups: dict[Any, Any] = {}
    out: dict[str, Any] = {}
    if extras:  # errors first: the cases after them prove the group is still in step
        out["errors"] = shape_errors()
        out["generator"] = {m: video_generator(m, ParallelConfig(sp_degree=2, timeout_s=60)) for m in GENERATOR_MODELS}
        out["batch_invariant"] = {m: video_generator(m, ParallelConfig(sp_degree=2, timeout_s=60), batch_invariant=True)
                                  for m in BATCH_INVARIANT_MODELS}
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
