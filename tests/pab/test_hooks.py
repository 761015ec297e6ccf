"""PAB hooks on the real diffusers transformers: exactness, the paper's counts, per-pass caches, lifecycle."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from pab import BroadcastRule, MLPBroadcastRule, PABApplyError, PABConfig, apply_pab, get_preset
from pab.runtime.models.tiny import (
    tiny_cogvideox_pipeline,
    tiny_latte_pipeline,
    tiny_latte_transformer,
    tiny_wan_pipeline,
)

from .conftest import run_to_latents

STEPS = 10


def expected_attention_broadcasts(timesteps: list[float], rule: BroadcastRule | None) -> int:
    """Broadcasts of ONE module per PAPER.md: reuse iff step_counter % range != 0 and lo < t < hi."""
    if rule is None:
        return 0
    lo, hi = rule.window
    return sum(1 for counter, t in enumerate(timesteps) if counter % rule.range != 0 and lo < t < hi)


def expected_mlp_broadcasts(timesteps: list[float], rule: MLPBroadcastRule) -> int:
    """Broadcasts of ONE MLP in a listed block: a step crossing an anchor computes, the next range-1 steps reuse."""
    reused, left, previous = 0, 0, float("inf")
    for t in timesteps:
        if any(previous > anchor >= t for anchor in rule.timesteps):
            left = rule.range - 1
        elif left > 0:
            reused, left = reused + 1, left - 1
        previous = t
    return reused


def _count_modules(handle, kind: str, blocks: tuple[int, ...] | None = None) -> int:
    return sum(1 for k, b in handle.modules.values() if k == kind and (blocks is None or b in blocks))


@pytest.mark.parametrize("builder", [tiny_latte_pipeline, tiny_cogvideox_pipeline, tiny_wan_pipeline])
def test_disabled_and_range_one_are_bit_identical(builder):
    pipe = builder()
    reference = run_to_latents(pipe, steps=4)
    handle = apply_pab(pipe.transformer, PABConfig.disabled())
    assert torch.equal(run_to_latents(pipe, steps=4), reference)
    assert handle.stats.attention.broadcast == 0 and handle.stats.attention.calls > 0
    ones = BroadcastRule(range=1, window=(0, 1000))
    handle.configure(PABConfig(spatial=ones, temporal=ones, cross=ones, mlp=MLPBroadcastRule((0, 1), (900, 500), 1)))
    assert torch.equal(run_to_latents(pipe, steps=4), reference)
    handle.remove()
    assert torch.equal(run_to_latents(pipe, steps=4), reference)


@pytest.mark.parametrize(
    "config",
    [
        # windows clipping the schedule at both ends, different per kind
        PABConfig(
            spatial=BroadcastRule(2, (300, 700)),
            temporal=BroadcastRule(3, (150, 950)),
            cross=BroadcastRule(5, (0, 1000)),
        ),
        get_preset("PAB-246+mlp", model="latte"),
        PABConfig(
            temporal=BroadcastRule(4, (50, 990)),
            mlp=MLPBroadcastRule(blocks=(1,), timesteps=(800, 450), range=3),
        ),
    ],
    ids=["clipped-windows", "PAB-246+mlp", "temporal-only+mlp"],
)
def test_counts_follow_the_papers_rule_on_latte(config):
    transformer = tiny_latte_transformer(num_layers=2)
    handle = apply_pab(transformer, config)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(30)
    timesteps = [float(t) for t in scheduler.timesteps]
    x = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # the second generation must count from scratch (timestep goes up -> new generation)
        with torch.no_grad():
            for t in timesteps:
                transformer(x, timestep=torch.tensor([t, t]), encoder_hidden_states=text, return_dict=False)
        stats = handle.stats
        assert stats.forwards == len(timesteps)
        for kind in ("spatial", "temporal", "cross"):
            n_modules = _count_modules(handle, kind)
            assert n_modules == 2
            expected = n_modules * expected_attention_broadcasts(timesteps, config.rule_for(kind))
            assert stats.kinds[kind].broadcast == expected, kind
            assert stats.kinds[kind].calls == n_modules * len(timesteps)
            assert stats.kinds[kind].computed == stats.kinds[kind].calls - expected
        mlp = stats.kinds["mlp"]
        if config.mlp is None:
            assert mlp.broadcast == 0
        else:
            n_mlp = _count_modules(handle, "mlp", config.mlp.blocks)
            assert mlp.broadcast == n_mlp * expected_mlp_broadcasts(timesteps, config.mlp) > 0
            assert mlp.calls == _count_modules(handle, "mlp") * len(timesteps)


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


def _record_attention_outputs(transformer, context_of):
    """Record (pass name, module name, output) for every call of every attention module, computed or broadcast."""
    calls: list[tuple[str, str, torch.Tensor]] = []
    for name, module in transformer.named_modules():
        if name.endswith(("attn1", "attn2")):
            module.register_forward_hook(
                lambda mod, args, out, name=name: calls.append((context_of(), name, out))
            )
    return calls


def _wan_context(transformer):
    registry = transformer._diffusers_hook
    for hook in registry.hooks.values():
        for attr in vars(hook).values():
            if hasattr(attr, "_context"):
                return lambda attr=attr: attr._context.name if attr._context else "?"
    raise AssertionError("no context receiver")


def test_wan_cond_and_uncond_never_share_a_cache():
    pipe = tiny_wan_pipeline()
    config = PABConfig(spatial=BroadcastRule(2, (0, 1000)), cross=BroadcastRule(3, (0, 1000)))
    handle = apply_pab(pipe.transformer, config)
    calls = _record_attention_outputs(pipe.transformer, _wan_context(pipe.transformer))
    run_to_latents(pipe, steps=STEPS)
    assert {c for c, _, _ in calls} == {"cond", "uncond"}
    assert handle.stats.kinds["cross"].broadcast > 0
    last_computed: dict[tuple[str, str], torch.Tensor] = {}
    broadcasts = 0
    for ctx, name, out in calls:
        previous = last_computed.get((ctx, name))
        other = last_computed.get(("uncond" if ctx == "cond" else "cond", name))
        if previous is not None and out is previous:
            broadcasts += 1
            assert out is not other, f"{name} in {ctx} reused the other pass's output"
            if name.endswith("attn2") and other is not None:  # text differs per pass, so must the cross attention
                assert not torch.equal(out, other)
        else:
            assert all(out is not v for (c, _), v in last_computed.items() if c != ctx)
            last_computed[(ctx, name)] = out
    assert broadcasts == handle.stats.attention.broadcast  # every broadcast came from its own pass


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


def test_two_pass_fallback_without_cache_context():
    """A two-pass pipeline that sets no cache_context still gets one cache per pass (call order at a timestep)."""
    from pab.runtime.models.tiny import tiny_wan_transformer

    transformer = tiny_wan_transformer()
    handle = apply_pab(transformer, PABConfig(cross=BroadcastRule(2, (0, 1000))))
    x = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    uncond = torch.zeros(1, 6, 32)
    outs = []
    with torch.no_grad():
        for t in (900.0, 800.0):
            for text in (cond, uncond):
                outs.append(transformer(x, timestep=torch.tensor([t]), encoder_hidden_states=text, return_dict=False)[0])
    assert handle.stats.kinds["cross"].broadcast == 2 * 2  # both blocks, both passes, at the 2nd step
    assert not torch.allclose(outs[2], outs[3])  # cond and uncond stay different when broadcast
