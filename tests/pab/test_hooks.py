"""PAB hooks on real diffusers pipelines: what our hooks do that diffusers' PAB does not, and the lifecycle.

The per-family checks (PAB off is exact, the paper's counts per kind, per-pass caches, remove) run for every model
family in test_models.py through `model_mixin.PABModelTesterMixin`.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from pab import BroadcastRule, PABApplyError, PABConfig, apply_pab, get_preset
from pab.runtime.models.tiny import (
    tiny_cogvideox_pipeline,
    tiny_latte_pipeline,
    tiny_latte_transformer,
    tiny_wan_pipeline,
)

from .conftest import run_to_latents
from .model_mixin import expected_attention_broadcasts

STEPS = 10


def test_latte_temporal_range_is_honoured_unlike_diffusers():
    """Temporal range 4 vs spatial 2: ours broadcasts temporal attention 3 of 4 steps in the window."""
    config = PABConfig(spatial=BroadcastRule(2, (0, 1000)), temporal=BroadcastRule(4, (0, 1000)))
    pipe = tiny_latte_pipeline()
    handle = apply_pab(pipe.transformer, config)
    run_to_latents(pipe, steps=12)
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    stats = handle.stats
    temporal, spatial = stats.kinds["temporal"].broadcast, stats.kinds["spatial"].broadcast
    assert temporal == 2 * expected_attention_broadcasts(timesteps, config.temporal)
    assert spatial == 2 * expected_attention_broadcasts(timesteps, config.spatial)
    assert temporal > spatial  # the spatial range (diffusers' mistake for this module) would give equal counts


def test_cogvideox_matches_diffusers_pab():
    """A peer's reference: diffusers' PAB gives the same video as ours for CogVideoX (no temporal split, one pass)."""
    window = (100, 850)
    ours_pipe = tiny_cogvideox_pipeline()
    apply_pab(ours_pipe.transformer, PABConfig(spatial=BroadcastRule(2, window)))
    ours = run_to_latents(ours_pipe, steps=STEPS)

    peer_pipe = tiny_cogvideox_pipeline()
    apply_pyramid_attention_broadcast(
        peer_pipe.transformer,
        PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=window,
            current_timestep_callback=lambda: peer_pipe.current_timestep,
        ),
    )
    peer = run_to_latents(peer_pipe, steps=STEPS)
    plain = run_to_latents(tiny_cogvideox_pipeline(), steps=STEPS)
    torch.testing.assert_close(ours, peer, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, plain, atol=1e-6)  # the broadcast really changed something


def test_diffusers_pab_mixes_cfg_passes_on_wan():
    """Why we keep per-pass caches: with diffusers' PAB the uncond pass returns the cond pass's cross attention."""
    pipe = tiny_wan_pipeline()
    apply_pyramid_attention_broadcast(
        pipe.transformer,
        PyramidAttentionBroadcastConfig(
            cross_attention_block_skip_range=2,
            cross_attention_timestep_skip_range=(0, 1000),
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
    )
    contexts = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: contexts.append(None))
    seen: list[tuple[int, str, torch.Tensor]] = []
    for name, module in pipe.transformer.named_modules():
        if name.endswith("attn2"):
            module.register_forward_hook(lambda mod, a, out, name=name: seen.append((len(contexts), name, out)))
    run_to_latents(pipe, steps=4)
    # forward k (1-based) is cond when k is odd, uncond when even; a module's output in an uncond forward that is
    # the very tensor of the preceding cond forward is a cross-pass reuse.
    by_forward = {(k, n): o for k, n, o in seen}
    mixed = sum(1 for (k, n), o in by_forward.items() if k % 2 == 0 and by_forward.get((k - 1, n)) is o)
    assert mixed > 0


def test_generation_state_resets_and_stats_survive_the_pipeline_end():
    pipe = tiny_latte_pipeline()
    handle = apply_pab(pipe.transformer, get_preset("PAB-246", model="latte"))
    first = run_to_latents(pipe, steps=STEPS)
    stats_first = handle.stats.to_dict()
    assert stats_first["forwards"] == STEPS and stats_first["attention"]["broadcast"] > 0
    second = run_to_latents(pipe, steps=STEPS)
    assert torch.equal(first, second)
    assert handle.stats.to_dict() == stats_first
    handle.reset()
    assert torch.equal(run_to_latents(pipe, steps=STEPS), first)


def test_apply_twice_and_bad_config_errors():
    transformer = tiny_latte_transformer()
    handle = apply_pab(transformer, get_preset("PAB-246"))
    with pytest.raises(PABApplyError, match="already applied"):
        apply_pab(transformer, get_preset("PAB-246"))
    handle.remove()
    apply_pab(transformer, get_preset("PAB-357")).remove()
    with pytest.raises(ValueError, match="PABConfig"):
        apply_pab(transformer, {"spatial": 2})
    with pytest.raises(ValueError, match="no adapter for Linear"):
        apply_pab(torch.nn.Linear(2, 2), get_preset("PAB-246"))
