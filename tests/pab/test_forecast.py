"""Forecasting broadcast: the extrapolation itself, and the per-module, per-pass forecasts the hooks return."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from pab import BroadcastRule, PABConfig, apply_pab, get_preset
from pab.config import PABConfigError
from pab.forecast import ForecastHistory, combine, lagrange_weights
from pab.runtime.models.tiny import tiny_latte_transformer, tiny_wan_pipeline

from .conftest import run_to_latents


def _poly(coeffs: list[torch.Tensor], t: float) -> torch.Tensor:
    return sum(c * t**i for i, c in enumerate(coeffs))


@pytest.mark.parametrize("order", [1, 2])
def test_forecast_is_exact_on_polynomials_of_its_order(order):
    g = torch.Generator().manual_seed(0)
    coeffs = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(order + 1)]
    history = ForecastHistory(order + 1)
    for t in (999.0, 959.0, 879.0)[: order + 1]:  # uneven spacing: weights are in timestep units, not step counts
        history.push(t, _poly(coeffs, t))
    for t in (839.0, 500.0):
        torch.testing.assert_close(history.predict(t, order), _poly(coeffs, t), rtol=1e-9, atol=1e-9)
    if order == 1:  # a line through y = a + b t + c t^2 at t = 2, 1 misses y(0) = a by exactly -2c
        a, b, c = coeffs[0], coeffs[1], torch.ones(3, 5, dtype=torch.float64)
        line = ForecastHistory(2)
        for t in (2.0, 1.0):
            line.push(t, _poly([a, b, c], t))
        torch.testing.assert_close(line.predict(0.0, 1), a - 2 * c)


def test_order_zero_and_a_single_point_return_the_cached_object():
    history = ForecastHistory(3)
    first = torch.randn(4)
    history.push(900.0, first)
    assert history.predict(800.0, 2) is first  # one point: nothing to extrapolate from
    second = torch.randn(4)
    history.push(850.0, second)
    assert history.predict(800.0, 0) is second
    history.push(850.0, first)  # a recompute at the same timestep replaces that point
    assert len(history) == 2 and history.latest() is first


def test_weights_sum_to_one_and_combine_follows_output_structures():
    weights = lagrange_weights([900.0, 860.0, 820.0], 700.0)
    assert sum(weights) == pytest.approx(1.0)
    a, b = torch.ones(2), torch.zeros(2)
    w = lagrange_weights([2.0, 1.0], 3.0)  # 2a - b
    out = combine([(a, "meta"), (b, "old")], w)
    assert isinstance(out, tuple) and out[1] == "meta"
    torch.testing.assert_close(out[0], 2 * a - b)
    model_out = combine([Transformer2DModelOutput(sample=a), Transformer2DModelOutput(sample=b)], w)
    assert isinstance(model_out, Transformer2DModelOutput)
    torch.testing.assert_close(model_out.sample, 2 * a - b)


def test_forecast_order_is_validated_and_serialised():
    with pytest.raises(PABConfigError, match="forecast_order"):
        BroadcastRule(2, (100, 800), forecast_order=3)
    with pytest.raises(PABConfigError, match="forecast_order"):
        BroadcastRule(2, (100, 800), forecast_order=True)
    with pytest.raises(PABConfigError, match="spatial.forecast_order"):
        PABConfig.from_dict({"spatial": {"range": 2, "window": [100, 800], "forecast_order": -1}})
    cfg = get_preset("PAB-246f", model="latte")
    assert {cfg.rule_for(k).forecast_order for k in ("spatial", "temporal", "cross")} == {1}
    assert PABConfig.from_dict(cfg.to_dict()) == cfg
    assert get_preset("PAB-357f2+mlp", model="latte").spatial.forecast_order == 2
    old_style = {"spatial": {"range": 2, "window": [100, 800]}}  # configs written before forecasting still load
    assert PABConfig.from_dict(old_style).spatial.forecast_order == 0


def _record(transformer, context_of=lambda: "default"):
    """(pass, module name, output) for every call of every attention module, as the caller of the module sees it."""
    calls: list[tuple[str, str, torch.Tensor]] = []
    for name, module in transformer.named_modules():
        if name.endswith(("attn1", "attn2")):
            module.register_forward_hook(lambda mod, args, out, name=name: calls.append((context_of(), name, out)))
    return calls


def _check_forecasts(calls, timesteps_of, rule_of) -> int:
    """Every call its rule broadcasts returns the line through the module's last two computed outputs of the same pass
    (the one output the first time, and always for order 0); every other call returns a fresh tensor."""
    computed: dict[tuple[str, str], list[tuple[float, torch.Tensor]]] = {}
    counter: dict[tuple[str, str], int] = {}
    checked = 0
    for index, (ctx, name, out) in enumerate(calls):
        key, t = (ctx, name), timesteps_of(index)
        c = counter.get(key, 0)
        counter[key] = c + 1
        history = computed.setdefault(key, [])
        rule = rule_of(name)
        if history and rule.broadcasts(c, t):
            if len(history) == 1 or rule.forecast_order == 0:
                assert out is history[-1][1]
            else:
                (ta, ya), (tb, yb) = history[-1], history[-2]
                expected = ya + (ya - yb) * (t - ta) / (ta - tb)
                tol = 1e-5 * float(ya.abs().max())  # float32 rounding of lerp vs this formula
                torch.testing.assert_close(out, expected, rtol=0, atol=tol)
                assert float((expected - ya).abs().max()) > 100 * tol  # a reuse would fail the check above
                checked += 1
        else:
            assert all(out is not y for _, y in history)
            history.append((t, out))
    return checked


def test_latte_modules_return_first_order_forecasts_under_the_pyramid_rule():
    config = PABConfig(spatial=BroadcastRule(2, (200, 900), 1), temporal=BroadcastRule(3, (0, 1000), 1),
                       cross=BroadcastRule(4, (300, 700), 0))
    transformer = tiny_latte_transformer(num_layers=2)
    handle = apply_pab(transformer, config)
    calls = _record(transformer)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(16)
    timesteps = [float(t) for t in scheduler.timesteps]
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in timesteps:
            transformer(x, timestep=torch.tensor([t]), encoder_hidden_states=text, return_dict=False)
    per_forward = len(calls) // len(timesteps)
    checked = _check_forecasts(calls, lambda i: timesteps[i // per_forward],
                               lambda name: config.rule_for(handle.modules[name][0]))
    stats = handle.stats
    assert checked == stats.kinds["spatial"].forecast + stats.kinds["temporal"].forecast > 0
    assert stats.kinds["cross"].forecast == 0 and stats.kinds["cross"].broadcast > 0  # order 0 still reuses
    # broadcasts before a module's second computation have one point: reuses, not forecasts (2 modules per kind):
    # spatial reuses at counter 1 only; temporal (range 3 from the first step) at counters 1 and 2
    assert stats.kinds["spatial"].broadcast - stats.kinds["spatial"].forecast == 2 * 1
    assert stats.kinds["temporal"].broadcast - stats.kinds["temporal"].forecast == 2 * 2


def test_wan_forecasts_per_cfg_pass():
    """cond and uncond each extrapolate their own outputs: a forecast never mixes the passes."""
    pipe = tiny_wan_pipeline()
    config = PABConfig(spatial=BroadcastRule(2, (0, 1000), 1), cross=BroadcastRule(3, (0, 1000), 1))
    handle = apply_pab(pipe.transformer, config)
    root = pipe.transformer._diffusers_hook.get_hook("pab_timestep")
    seen_t: list[float] = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen_t.append(float(kwargs["timestep"].max())), with_kwargs=True)
    calls = _record(pipe.transformer, lambda: root.context._context.name)
    run_to_latents(pipe, steps=8)
    per_forward = len(calls) // len(seen_t)
    checked = _check_forecasts(calls, lambda i: seen_t[i // per_forward],
                               lambda name: config.rule_for(handle.modules[name][0]))
    assert {ctx for ctx, _, _ in calls} == {"cond", "uncond"}
    assert checked == handle.stats.attention.forecast > 0


def test_forecast_changes_the_video_but_not_the_schedule(latents):
    from pab.runtime.models.tiny import tiny_latte_pipeline

    pipe = tiny_latte_pipeline()
    handle = apply_pab(pipe.transformer, get_preset("PAB-246", model="latte"))
    reused = run_to_latents(pipe, steps=12)
    counts = {k: v.to_dict() for k, v in handle.stats.kinds.items()}
    handle.configure(get_preset("PAB-246f", model="latte"))
    forecast = run_to_latents(pipe, steps=12)
    assert not torch.allclose(reused, forecast, atol=1e-6)
    for kind, before in counts.items():
        after = handle.stats.kinds[kind].to_dict()
        assert {k: after[k] for k in ("calls", "computed", "broadcast")} == {
            k: before[k] for k in ("calls", "computed", "broadcast")}, kind
    assert handle.stats.attention.forecast > 0
