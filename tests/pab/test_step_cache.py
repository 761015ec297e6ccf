"""Step-level broadcast: whole forwards reused or forecast on the rule's steps, per CFG pass, composed with the
per-module pyramid, with stats and skipped collectives booked."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from pab import BroadcastRule, PABConfig, apply_pab, get_preset
from pab.runtime.models.tiny import tiny_latte_pipeline, tiny_latte_transformer, tiny_wan_pipeline
from pab.stats import record_collective

from .conftest import run_to_latents

STEPS = 16


def _loop(transformer, steps: int = STEPS, batch: int = 1, generations: int = 1):
    """Run a DDIM timestep loop on fixed inputs; return the timesteps and each forward's output."""
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    x = torch.randn(batch, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(batch, 5, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    with torch.no_grad():
        for _ in range(generations):
            outs = [transformer(x, timestep=torch.full((batch,), t), encoder_hidden_states=text).sample
                    for t in timesteps]
    return timesteps, outs


def _module_calls(transformer) -> list[int]:
    calls = [0]
    for name, module in transformer.named_modules():
        if name.endswith(("attn1", "attn2", "ff")):
            module.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("order", [0, 1])
def test_skipped_forwards_run_nothing_and_return_the_rules_output(order):
    rule = BroadcastRule(3, (100, 900), order)
    transformer = tiny_latte_transformer(num_layers=2)
    handle = apply_pab(transformer, PABConfig(step=rule))
    module_calls = _module_calls(transformer)
    timesteps, outs = _loop(transformer)
    schedule = [c > 0 and rule.broadcasts(c, t) for c, t in enumerate(timesteps)]
    skipped = sum(schedule)
    assert skipped >= 6
    step = handle.stats.step
    assert (step.calls, step.computed, step.broadcast) == (len(timesteps), len(timesteps) - skipped, skipped)
    assert module_calls[0] == (len(timesteps) - skipped) * len(handle.modules)  # nothing inside ran when skipped
    computed: list[tuple[float, torch.Tensor]] = []
    forecasts = 0
    for t, out, skip in zip(timesteps, outs, schedule):
        if not skip:
            computed.append((t, out))
        elif order == 0 or len(computed) == 1:
            assert out is computed[-1][1]
        else:
            (ta, ya), (tb, yb) = computed[-1], computed[-2]
            expected = ya + (ya - yb) * (t - ta) / (ta - tb)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * float(ya.abs().max()))
            assert not torch.allclose(out, ya, atol=1e-3)
            forecasts += 1
    assert step.forecast == forecasts
    assert (forecasts > skipped // 2) if order else forecasts == 0
    for kind in ("spatial", "temporal", "cross"):  # a skipped forward counts as a broadcast of every module
        k = handle.stats.kinds[kind]
        assert (k.calls, k.broadcast, k.forecast) == (2 * len(timesteps), 2 * skipped, 2 * forecasts)


def test_composes_with_the_per_module_pyramid():
    """Module counters advance on the forwards that run: spatial range 2 under step range 2 computes every 4th step."""
    step = BroadcastRule(2, (0, 1000))
    spatial = BroadcastRule(2, (0, 1000))
    transformer = tiny_latte_transformer(num_layers=2)
    handle = apply_pab(transformer, PABConfig(spatial=spatial, step=step))
    timesteps, _ = _loop(transformer)
    ran = [t for c, t in enumerate(timesteps) if not (c > 0 and step.broadcasts(c, t))]
    module_broadcasts = sum(1 for c, t in enumerate(ran) if c > 0 and spatial.broadcasts(c, t))
    s = handle.stats.kinds["spatial"]
    skipped = len(timesteps) - len(ran)
    assert s.calls == 2 * len(timesteps)
    assert s.broadcast == 2 * (skipped + module_broadcasts)
    # steps 0, 4, 8, 12 and the last (t=0 is outside every window, so it computes at both levels)
    assert s.computed == 2 * (len(ran) - module_broadcasts) == 2 * 5
    assert handle.stats.kinds["temporal"].computed == 2 * len(ran)


def test_step_rule_is_per_cfg_pass_and_batch_independent():
    """Wan runs cond and uncond as two forwards: each pass skips on its own counter and reuses its own output."""
    pipe = tiny_wan_pipeline()
    handle = apply_pab(pipe.transformer, PABConfig(step=BroadcastRule(2, (0, 1000))))
    root = pipe.transformer._diffusers_hook.get_hook("pab_timestep")
    outs: list[tuple[str, torch.Tensor]] = []
    pipe.transformer.register_forward_hook(lambda m, a, out: outs.append((root.context._context.name, out[0])))
    run_to_latents(pipe, steps=8)
    assert [c for c, _ in outs[:4]] == ["cond", "uncond", "cond", "uncond"]
    for i in range(2, len(outs)):
        ctx, out = outs[i]
        same_pass_before = outs[i - 2][1]
        if (i // 2) % 2:  # odd step: skipped, returns this pass's previous output
            assert out is same_pass_before and out is not outs[i - 1][1]
        else:
            assert out is not same_pass_before
    assert handle.stats.step.broadcast == 2 * 4  # steps 1, 3, 5, 7 in both passes
    # The schedule depends only on the timestep: a batch of 3 skips exactly the same forwards as a batch of 1
    one, three = tiny_latte_transformer(num_layers=1), tiny_latte_transformer(num_layers=1)
    h1 = apply_pab(one, get_preset("step3f", model="latte"))
    h3 = apply_pab(three, get_preset("step3f", model="latte"))
    _loop(one, batch=1)
    _loop(three, batch=3)
    assert h1.stats.to_dict()["step"] == h3.stats.to_dict()["step"] and h1.stats.step.broadcast > 0


class _CountingProcessor:
    """Wraps an attention processor and reports `nbytes` as issued, like a sequence-parallel one does."""

    def __init__(self, inner, op: str, nbytes: int) -> None:
        self.inner, self.op, self.nbytes = inner, op, nbytes

    def __call__(self, *args, **kwargs):
        record_collective(self.op, self.nbytes)
        return self.inner(*args, **kwargs)


def test_skipped_forward_books_every_collective_it_would_have_issued():
    transformer = tiny_latte_transformer(num_layers=1)
    for attn, nbytes in ((transformer.transformer_blocks[0].attn1, 100),
                         (transformer.temporal_transformer_blocks[0].attn1, 30)):
        attn.set_processor(_CountingProcessor(attn.processor, "all_to_all", nbytes))
    transformer.pos_embed.register_forward_pre_hook(lambda m, a: record_collective("all_gather", 7))  # -> "other"
    rule = BroadcastRule(2, (0, 1000))
    handle = apply_pab(transformer, PABConfig(step=rule))
    timesteps, _ = _loop(transformer, steps=10)
    stats = handle.stats
    ran, skipped = stats.step.computed, stats.step.broadcast
    assert (ran, skipped) == (6, 4)  # counters 1, 3, 5, 7 skip; 9 is t=0, outside the window
    assert (stats.bytes_issued("spatial"), stats.bytes_skipped("spatial")) == (100 * ran, 100 * skipped)
    assert (stats.bytes_issued("temporal"), stats.bytes_skipped("temporal")) == (30 * ran, 30 * skipped)
    assert (stats.bytes_issued("other"), stats.bytes_skipped("other")) == (7 * ran, 7 * skipped)
    assert stats.bytes_issued("cross") == stats.bytes_skipped("cross") == 0
    assert stats.to_dict()["comm"]["saved_fraction"] == pytest.approx(skipped / len(timesteps))


def test_step_presets_config_round_trip_and_generation_reset():
    cfg = get_preset("step3f", model="latte")
    assert cfg.step == BroadcastRule(3, (100, 800), 1) and cfg.spatial is None and cfg.enabled
    assert PABConfig.from_dict(cfg.to_dict()) == cfg
    assert PABConfig.from_dict({"step": {"range": 2, "window": [0, 1000]}}).step.forecast_order == 0
    with pytest.raises(ValueError, match="unknown preset 'step3\\+mlp'"):
        get_preset("step3+mlp", model="latte")
    pipe = tiny_latte_pipeline()
    handle = apply_pab(pipe.transformer, cfg)
    first = run_to_latents(pipe, steps=12)
    stats = handle.stats.to_dict()
    assert stats["step"]["broadcast"] > 0 and stats["step"]["forecast"] > 0
    assert torch.equal(run_to_latents(pipe, steps=12), first)  # a new generation starts from empty step caches
    assert handle.stats.to_dict() == stats
    handle.remove()
    plain = run_to_latents(pipe, steps=12)
    assert not torch.allclose(plain, first, atol=1e-6)
