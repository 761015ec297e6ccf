"""Calibration: choose each attention kind's broadcast window and range from a measured profile.

The paper fixes one window (e.g. 100..800) and a pyramid of ranges (2/4/6) by hand. Here the profile says where each
kind's output is stable (the floor of its U-shaped difference curve) and how stable (spatial > temporal >> cross for
Latte-style models), so candidates are built from it: for a threshold factor f, a kind's window is the contiguous run
of steps around its curve's minimum whose difference stays below f x the least stable kind's minimum (one absolute
threshold: reusing an output costs about its step-to-step difference, whatever the kind); ranges follow the kinds' stability
order in a pyramid (base, base+gap, base+2*gap). Candidates are ranked by the broadcast fraction they give (computed
exactly by replaying the PAB rule over the sampler's timesteps), and the most aggressive one that meets the quality
budget - a PSNR floor against the full model, measured by actually generating - wins.

Beyond these pyramids (`modes`), the same pyramids forecasting instead of reusing, and step-level rules (the whole
transformer output reused or forecast) compete on one scale: the estimated share of the full model's transformer
time they spend (`estimated_cost`, replayed like the fraction). Every measured setting lands in the reported
frontier (cost against PSNR); the cheapest one over the floor wins.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

from pab.config import ATTENTION_KINDS, TIMESTEP_SCALE, BroadcastRule, PABConfig
from pab.runtime.tools.profiler import AttentionProfile
from pab.runtime.tools.quality import EvalRow, run_config

FACTORS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 30.0, 100.0)
BASES: tuple[int, ...] = (2, 3, 4, 5, 6)
GAPS: tuple[int, ...] = (1, 2)


class CalibrationError(ValueError):
    """The inputs cannot be calibrated (empty profile, no candidate); the message says what to change."""


def rule_fraction(rule: BroadcastRule | None, timesteps: list[float]) -> float:
    """Fraction of one module's calls that the PAB rule broadcasts over one generation (one CFG pass)."""
    if rule is None or not timesteps:
        return 0.0
    hits = sum(1 for counter, t in enumerate(timesteps) if counter > 0 and rule.broadcasts(counter, t))
    return hits / len(timesteps)


def broadcast_fraction(config: PABConfig, timesteps: list[float], modules: dict[str, int]) -> float:
    """Attention calls broadcast / attention calls, with `modules` counting modules per kind."""
    total = sum(modules.get(k, 0) for k in ATTENTION_KINDS)
    if total == 0:
        raise CalibrationError("no attention module to broadcast; the profile lists none")
    return sum(modules.get(k, 0) * rule_fraction(config.rule_for(k), timesteps) for k in ATTENTION_KINDS) / total


def stable_window(profile: AttentionProfile, kind: str, threshold: float) -> tuple[float, float] | None:
    """The contiguous steps around the curve's minimum whose difference is <= threshold, as an open window
    (at least the minimum's own step)."""
    curve, ts = profile.kind_curve(kind), profile.timesteps
    if not curve:
        return None
    best = min(range(len(curve)), key=curve.__getitem__)
    limit = max(threshold, curve[best])
    lo = hi = best
    while hi + 1 < len(curve) and curve[hi + 1] <= limit:
        hi += 1
    while lo > 0 and curve[lo - 1] <= limit:
        lo -= 1
    t_hi, t_lo = max(ts[lo], ts[hi]), min(ts[lo], ts[hi])
    return max(0.0, t_lo - 0.5), min(TIMESTEP_SCALE, t_hi + 0.5)


def candidates(profile: AttentionProfile, factors=FACTORS, bases=BASES, gaps=GAPS) -> list[PABConfig]:
    """Every (factor, base, gap) config: per-kind windows from the profile, pyramid ranges by stability.

    One absolute threshold per factor for all kinds - f x the floor of the least stable kind's U - since reusing an
    output costs about its step-to-step difference, whatever the kind: stable kinds get wider windows.
    """
    kinds = profile.kinds
    if not kinds:
        raise CalibrationError("the profile holds no attention kind; profile a model with an adapter first")
    reference = max(min(profile.kind_curve(k)) for k in kinds)
    out = []
    for f in factors:
        windows = {k: stable_window(profile, k, f * reference) for k in kinds}
        # Least stable kind (largest mean difference inside its window) gets the smallest range.
        def in_window_mean(k: str) -> float:
            lo, hi = windows[k]
            vals = [v for t, v in zip(profile.timesteps, profile.kind_curve(k)) if lo < t < hi]
            return sum(vals) / len(vals)
        order = sorted(kinds, key=in_window_mean, reverse=True)
        for base in bases:
            for gap in gaps:
                rules = {k: BroadcastRule(range=base + gap * i, window=windows[k]) for i, k in enumerate(order)}
                out.append(PABConfig(**rules, name=f"calibrated(f={f:g},base={base},gap={gap})"))
    return out


STEP_RANGES: tuple[int, ...] = (2, 3, 4)
MODES: tuple[str, ...] = ("pyramid", "forecast", "step", "step-forecast")
"""Candidate families, each searched on its own: profile-derived pyramids (reuse), the same pyramids forecasting
(order 1), and step-level rules reusing or forecasting the whole transformer output."""
ATTENTION_SHARE = 0.35
"""Share of a transformer forward spent in attention, for the cost estimate (bench/pab_speed.py profiles 35.5% on
the CPU Latte config); only the ranking of candidates depends on it."""


def forecasting(configs: list[PABConfig], order: int = 1) -> list[PABConfig]:
    """The same rules, forecasting instead of reusing."""
    out = []
    for c in configs:
        rules = {k: None if (r := c.rule_for(k)) is None else replace(r, forecast_order=order) for k in ATTENTION_KINDS}
        out.append(c.replace(**rules, name=c.name.replace("calibrated(", f"calibrated(f{order},")))
    return out


def step_candidates(profile: AttentionProfile, ranges=STEP_RANGES, orders=(0,)) -> list[PABConfig]:
    """Step rules whose window closes at 0 or at the lowest bound of the profile-derived pyramids, and opens between
    two consecutive profiled steps anywhere above the least stable kind's minimum: early steps change fastest, so
    where the window opens is what matters most."""
    windows = {rule.window for cand in candidates(profile, bases=(2,), gaps=(1,))
               for kind in ATTENTION_KINDS if (rule := cand.rule_for(kind)) is not None}
    lows = {0.0, min((w[0] for w in windows if w[0] > 0), default=0.0)}
    floor_t = max(s["min_timestep"] for s in profile.summary().values())
    ts = sorted(profile.timesteps)
    highs = [(a + b) / 2 for a, b in zip(ts, ts[1:]) if (a + b) / 2 > floor_t]
    return [PABConfig(step=BroadcastRule(r, (lo, hi), o), name=f"calibrated(step{r},o{o},{lo:g}-{hi:g})")
            for lo in sorted(lows) for hi in highs if hi > lo for r in ranges for o in orders]


def estimated_cost(config: PABConfig, timesteps: list[float], modules: dict[str, int],
                   attention_share: float = ATTENTION_SHARE) -> float:
    """Fraction of the full model's transformer time a config spends (one CFG pass), replaying its rules: a skipped
    step costs nothing; on the forwards that run, broadcast attention saves its share."""
    step = config.step
    ran = [t for c, t in enumerate(timesteps) if not (step is not None and c > 0 and step.broadcasts(c, t))]
    run_fraction = len(ran) / len(timesteps)
    return run_fraction * (1.0 - attention_share * broadcast_fraction(config, ran, modules))


@dataclass
class CalibrationResult:
    config: PABConfig | None
    chosen: EvalRow | None
    baseline: EvalRow
    full: EvalRow
    floor: float
    trials: list[EvalRow] = field(default_factory=list)
    verdict: str = ""
    frontier: list[dict[str, Any]] = field(default_factory=list)
    """Measured rows (full, baseline, trials) not beaten on both estimated cost and PSNR, cheapest first."""

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict() if self.config else None, "floor_psnr": self.floor,
                "chosen": self.chosen.to_dict() if self.chosen else None, "baseline": self.baseline.to_dict(),
                "full": self.full.to_dict(), "trials": [t.to_dict() for t in self.trials], "verdict": self.verdict,
                "frontier": self.frontier}


def sampler_timesteps(generator: Any, num_inference_steps: int) -> list[float]:
    """The timesteps the generator's scheduler visits for this many steps (on a copy: the pipeline is untouched)."""
    scheduler = copy.deepcopy(generator.pipeline.scheduler)
    scheduler.set_timesteps(num_inference_steps)
    return [float(t) for t in scheduler.timesteps]


def _families(profile: AttentionProfile, modes: tuple[str, ...]) -> dict[str, list[PABConfig]]:
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise CalibrationError(f"modes must be some of {list(MODES)}, got {list(modes)}")
    pyramids = candidates(profile)
    built = {"pyramid": lambda: pyramids, "forecast": lambda: forecasting(pyramids),
             "step": lambda: step_candidates(profile), "step-forecast": lambda: step_candidates(profile, orders=(1,))}
    return {m: built[m]() for m in modes}


def _module_counts(profile: AttentionProfile) -> dict[str, int]:
    return {k: sum(1 for v in profile.layers.values() if v["kind"] == k) for k in profile.kinds}


def schedule_error(config: PABConfig, profile: AttentionProfile, timesteps: list[float]) -> float:
    """A proxy of what a schedule loses, from the profile alone: for every call it skips, how far the module's output
    moved since it last computed - the profiled RMS change per step for a reuse, the change of that change (what a
    line cannot follow) for a forecast. A skipped forward counts for every module."""
    rms = {k: [math.sqrt(v) for v in profile.kind_curve(k)] for k in profile.kinds}
    at = {t: i for i, t in enumerate(profile.timesteps)}
    counts = _module_counts(profile)
    drift = {k: [0.0, 0.0] for k in profile.kinds}  # since the kind last computed: [moved, moved off a line]
    counters = dict.fromkeys(profile.kinds, 0)
    step, error = config.step, 0.0
    for forward, t in enumerate(timesteps):
        i = at.get(t)
        for k, d in drift.items():
            if i is not None:
                d[0] += rms[k][i]
                d[1] += abs(rms[k][i] - rms[k][i - 1]) if i > 0 else rms[k][i]
        skip_step = step is not None and forward > 0 and step.broadcasts(forward, t)
        for k, d in drift.items():
            rule = step if skip_step else config.rule_for(k)
            if skip_step or (rule is not None and counters[k] > 0 and rule.broadcasts(counters[k], t)):
                error += counts[k] * d[min(rule.forecast_order, 1)]
            else:
                d[0] = d[1] = 0.0
            counters[k] += not skip_step
    return error


def _ranked(family: list[PABConfig], cost: Any, error: Any, below: float | None) -> list[tuple[float, PABConfig]]:
    """One config per cost level of a family, cheapest first (only those cheaper than `below` when given): at equal
    cost, the one whose skipped calls the profile says change least (`schedule_error`)."""
    best: dict[float, tuple[float, PABConfig]] = {}
    for cand in family:
        c = round(cost(cand), 9)
        if c >= 1.0 or (below is not None and c >= below - 1e-9):
            continue
        e = error(cand)
        if c not in best or e < best[c][0]:
            best[c] = (e, cand)
    return [(c, cand) for c, (_, cand) in sorted(best.items())]


def _search(ranked: dict[str, list[tuple[float, PABConfig]]], measure: Any, floor: float, max_trials: int
            ) -> tuple[tuple[str, int] | None, int, bool]:
    """Bisect every family for its cheapest candidate meeting the floor (PSNR rises with cost, roughly), one step
    per family in turn, `max_trials` measurements in all. Returns (family, index) of the cheapest pass (at equal
    cost the one with the higher PSNR), the trials used and whether every bisection finished."""
    bounds = {f: [0, len(r) - 1, None] for f, r in ranked.items() if r}
    used = 0
    while used < max_trials and any(lo <= hi for lo, hi, _ in bounds.values()):
        for family, b in bounds.items():
            if b[0] > b[1] or used >= max_trials:
                continue
            mid = (b[0] + b[1]) // 2
            used += 1
            if measure(family, mid).psnr >= floor:
                b[2], b[1] = mid, mid - 1
            else:
                b[0] = mid + 1
    passing = [(ranked[f][b[2]][0], -measure(f, b[2]).psnr, (f, b[2])) for f, b in bounds.items() if b[2] is not None]
    finished = all(lo > hi for lo, hi, _ in bounds.values())
    return (min(passing)[2] if passing else None), used, finished  # the cheapest; at equal cost the best


def frontier_rows(rows: list[tuple[float, EvalRow]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both cost (lower) and PSNR (higher), cheapest first."""
    out: list[dict[str, Any]] = []
    for cost, row in sorted(rows, key=lambda cr: (cr[0], -cr[1].psnr)):
        if not out or row.psnr > out[-1]["psnr"]:
            out.append({"name": row.name, "cost": cost, "psnr": row.psnr, "ssim": row.ssim,
                        "attention_broadcast": row.broadcast, "s_per_video": row.denoise_s, "config": row.config})
    return out


def calibrate(
    generator: Any,
    profile: AttentionProfile,
    prompts: list[str],
    seeds: list[int],
    *,
    psnr_floor: float | None = None,
    baseline: str = "PAB-246",
    max_trials: int = 8,
    num_inference_steps: int | None = None,
    modes: tuple[str, ...] = ("pyramid",),
    attention_share: float = ATTENTION_SHARE,
    **params: Any,
) -> CalibrationResult:
    """Pick the cheapest candidate (estimated transformer time, `estimated_cost`) whose measured PSNR meets the floor.

    The floor defaults to the baseline preset's own PSNR, so a success means: cheaper than the baseline at equal or
    better PSNR. Each family in `modes` is bisected over its cost levels (PSNR falls as the cost falls, roughly),
    one candidate per level (`_ranked`); `max_trials` generation sets at most over all families. For the pyramid
    family alone the cost order is the broadcast-fraction order. Every measured row goes into the reported frontier.
    """
    steps = num_inference_steps or generator.defaults["num_inference_steps"]
    params = dict(params, num_inference_steps=steps)
    timesteps = sampler_timesteps(generator, steps)
    modules = _module_counts(profile)
    cost = lambda c: estimated_cost(c, timesteps, modules, attention_share)  # noqa: E731
    pairs = [(p, s) for p in prompts for s in seeds]
    full, refs = run_config(generator, pairs, "none", **params)
    full.name = "full (no PAB)"
    base_row, _ = run_config(generator, pairs, baseline, refs, **params)
    base_cost = cost(generator.resolve_pab(baseline))
    floor = base_row.psnr if psnr_floor is None else psnr_floor
    error = lambda c: schedule_error(c, profile, timesteps)  # noqa: E731
    ranked = {f: _ranked(fam, cost, error, base_cost if psnr_floor is None else None)
              for f, fam in _families(profile, tuple(modes)).items()}
    measured: dict[tuple[str, int], EvalRow] = {}
    trials: list[EvalRow] = []

    def measure(family: str, i: int) -> EvalRow:
        if (family, i) not in measured:
            measured[(family, i)] = run_config(generator, pairs, ranked[family][i][1], refs, **params)[0]
            trials.append(measured[(family, i)])
        return measured[(family, i)]

    best, used, finished = _search(ranked, measure, floor, max_trials)
    rows = [(1.0, full), (base_cost, base_row), *((ranked[f][i][0], r) for (f, i), r in measured.items())]
    result = CalibrationResult(None, None, base_row, full, floor, trials, frontier=frontier_rows(rows))
    if best is None:
        searched = "every bisection step" if finished else f"only {used} trials (--max-trials)"
        result.verdict = (f"no candidate reached PSNR {floor:.2f} dB; measured {searched} over "
                          f"{sum(len(r) for r in ranked.values())} candidates ({', '.join(ranked)}) cheaper than "
                          f"{baseline} (estimated cost {base_cost:.3f})")
        result.verdict += (f": on this model {baseline} is at the quality/speed frontier of these families"
                           if finished else "; raise --max-trials or lower --psnr-floor")
        return result
    chosen_cost, config = ranked[best[0]][best[1]]
    result.chosen, result.config = measured[best], config.replace(name="calibrated")
    result.chosen.name = "calibrated"
    result.verdict = _verdict(best[0], chosen_cost, result.chosen, baseline, base_cost, base_row, floor)
    return result


def _verdict(family: str, cost: float, row: EvalRow, baseline: str, base_cost: float, base_row: EvalRow,
             floor: float) -> str:
    verdict = (f"calibrated ({family}): estimated cost {cost:.3f} of the full model vs {baseline} {base_cost:.3f}, "
               f"{100 * row.broadcast:.1f}% of attention broadcast vs {100 * base_row.broadcast:.1f}%, at PSNR "
               f"{row.psnr:.2f} dB vs {base_row.psnr:.2f} dB (floor {floor:.2f})")
    if not math.isfinite(row.psnr) or cost >= base_cost:
        verdict += f"; it is not cheaper than {baseline}"
    return verdict
