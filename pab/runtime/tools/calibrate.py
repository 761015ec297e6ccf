"""Calibration: choose each attention kind's broadcast window and range from a measured profile.

The paper fixes one window (e.g. 100..800) and a pyramid of ranges (2/4/6) by hand. Here the profile says where each
kind's output is stable (the floor of its U-shaped difference curve) and how stable (spatial > temporal >> cross for
Latte-style models), so candidates are built from it: for a threshold factor f, a kind's window is the contiguous run
of steps around its curve's minimum whose difference stays below f x the least stable kind's minimum (one absolute
threshold: reusing an output costs about its step-to-step difference, whatever the kind); ranges follow the kinds' stability
order in a pyramid (base, base+gap, base+2*gap). Candidates are ranked by the broadcast fraction they give (computed
exactly by replaying the PAB rule over the sampler's timesteps), and the most aggressive one that meets the quality
budget - a PSNR floor against the full model, measured by actually generating - wins.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
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


@dataclass
class CalibrationResult:
    config: PABConfig | None
    chosen: EvalRow | None
    baseline: EvalRow
    full: EvalRow
    floor: float
    trials: list[EvalRow] = field(default_factory=list)
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict() if self.config else None, "floor_psnr": self.floor,
                "chosen": self.chosen.to_dict() if self.chosen else None, "baseline": self.baseline.to_dict(),
                "full": self.full.to_dict(), "trials": [t.to_dict() for t in self.trials], "verdict": self.verdict}


def sampler_timesteps(generator: Any, num_inference_steps: int) -> list[float]:
    """The timesteps the generator's scheduler visits for this many steps (on a copy: the pipeline is untouched)."""
    scheduler = copy.deepcopy(generator.pipeline.scheduler)
    scheduler.set_timesteps(num_inference_steps)
    return [float(t) for t in scheduler.timesteps]


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
    **params: Any,
) -> CalibrationResult:
    """Pick the candidate with the largest broadcast fraction whose measured PSNR meets the floor.

    The floor defaults to the baseline preset's own PSNR, so a success means: more attention broadcast than the
    baseline at equal or better PSNR. Candidates are tried by bisection over the fraction-sorted list (PSNR falls
    as the fraction grows, roughly), `max_trials` generations sets at most.
    """
    steps = num_inference_steps or generator.defaults["num_inference_steps"]
    params = dict(params, num_inference_steps=steps)
    timesteps = sampler_timesteps(generator, steps)
    modules: dict[str, int] = {}
    for layer in profile.layers.values():
        modules[layer["kind"]] = modules.get(layer["kind"], 0) + 1
    pairs = [(p, s) for p in prompts for s in seeds]
    full, refs = run_config(generator, pairs, "none", **params)
    full.name = "full (no PAB)"
    base_row, _ = run_config(generator, pairs, baseline, refs, **params)
    floor = base_row.psnr if psnr_floor is None else psnr_floor
    base_fraction = base_row.broadcast
    scored = {}
    for cand in candidates(profile):
        frac = broadcast_fraction(cand, timesteps, modules)
        key = tuple((k, r.range, r.window) for k in ATTENTION_KINDS if (r := cand.rule_for(k)) is not None)
        if frac > 0 and key not in scored:
            scored[key] = (frac, cand)
    ranked = sorted(scored.values(), key=lambda fc: -fc[0])
    if psnr_floor is None:  # only candidates that would beat the baseline's speed are worth measuring
        ranked = [fc for fc in ranked if fc[0] > base_fraction + 1e-9]
    trials: list[EvalRow] = []
    measured: dict[int, EvalRow] = {}

    def passes(i: int) -> bool:
        if i not in measured:
            measured[i] = run_config(generator, pairs, ranked[i][1], refs, **params)[0]
            trials.append(measured[i])
        return measured[i].psnr >= floor

    lo, hi, best = 0, len(ranked) - 1, None  # find the most aggressive (smallest index) passing candidate
    while lo <= hi and len(trials) < max_trials:
        mid = (lo + hi) // 2
        if passes(mid):
            best, hi = mid, mid - 1
        else:
            lo = mid + 1
    if best is None:
        searched = "every bisection step" if lo > hi else f"only {len(trials)} trials (--max-trials)"
        verdict = (f"no candidate reached PSNR {floor:.2f} dB; measured {searched} over {len(ranked)} candidates "
                   f"that broadcast more than {baseline}'s {100 * base_fraction:.1f}%")
        verdict += (f": on this model {baseline} is at the quality/speed frontier of the profile-derived family"
                    if lo > hi else "; raise --max-trials or lower --psnr-floor")
        return CalibrationResult(None, None, base_row, full, floor, trials, verdict)
    row, config = measured[best], ranked[best][1].replace(name="calibrated")
    row.name = "calibrated"
    gain = row.broadcast - base_fraction
    verdict = (f"calibrated: {100 * row.broadcast:.1f}% of attention broadcast vs {baseline} "
               f"{100 * base_fraction:.1f}% ({'+' if gain >= 0 else ''}{100 * gain:.1f} points) at PSNR "
               f"{row.psnr:.2f} dB vs {base_row.psnr:.2f} dB (floor {floor:.2f})")
    if not math.isfinite(row.psnr) or row.broadcast <= base_fraction:
        verdict += f"; it does not broadcast more than {baseline}"
    return CalibrationResult(config, row, base_row, full, floor, trials, verdict)
