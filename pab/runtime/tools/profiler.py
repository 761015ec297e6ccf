"""Attention-difference profiler: how much each attention module's output changes from one diffusion step to the next.

This is the measurement behind PAB (PAPER.md, the U-shaped curve): per attention kind and layer, the mean squared
difference of a module's output between consecutive denoising steps, over the steps of a generation, averaged over
prompts. It uses plain torch forward hooks on the modules the model's `pab.adapters` adapter classifies, so it works on
any supported diffusers transformer, and composes with PAB: a broadcast module returns its cached output, so its
difference at that step is exactly zero.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, ImageDraw

from pab.adapters import ModelAdapter, adapter_for
from pab.config import ATTENTION_KINDS

PLOT_COLOURS = {"spatial": (214, 39, 40), "temporal": (31, 119, 180), "cross": (44, 160, 44)}


class ProfileError(ValueError):
    """The profiled generations cannot be combined (different step counts) or nothing was recorded."""


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@dataclass
class AttentionProfile:
    r"""
    Per-step output differences, averaged over the profiled generations.

    Args:
        timesteps (`list[float]`): The timestep of every step after the first (a difference needs a previous step).
        layers (`dict[str, dict]`): Per module path: `kind`, `block`, and `diff` (one value per entry of timesteps).
        generations (`int`): How many generations were averaged.
        model (`str`): The transformer class profiled.
    """

    timesteps: list[float]
    layers: dict[str, dict[str, Any]]
    generations: int
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def kind_curve(self, kind: str) -> list[float]:
        """Mean over the layers of one kind, per step; empty if the model has no module of that kind."""
        rows = [v["diff"] for v in self.layers.values() if v["kind"] == kind]
        if not rows:
            return []
        return [sum(col) / len(rows) for col in zip(*rows)]

    @property
    def kinds(self) -> list[str]:
        present = {v["kind"] for v in self.layers.values()}
        return [k for k in ATTENTION_KINDS if k in present]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: the curve's first, minimum (and where), and last values - the U's two ends and its floor."""
        out = {}
        for kind in self.kinds:
            curve = self.kind_curve(kind)
            i = min(range(len(curve)), key=curve.__getitem__)
            out[kind] = {"first": curve[0], "min": curve[i], "min_timestep": self.timesteps[i], "last": curve[-1],
                         "mean": sum(curve) / len(curve)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "generations": self.generations, "timesteps": self.timesteps,
                "kinds": {k: self.kind_curve(k) for k in self.kinds}, "summary": self.summary(),
                "layers": self.layers, "meta": self.meta}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "AttentionProfile":
        d = json.loads(Path(path).read_text())
        missing = [k for k in ("timesteps", "layers", "generations") if k not in d]
        if missing:
            raise ProfileError(f"{path} is not an attention profile: missing {missing}; write one with `pab profile`")
        return cls(d["timesteps"], d["layers"], d["generations"], d.get("model", ""), d.get("meta", {}))


class AttentionProfiler:
    """Forward hooks that record consecutive-step output differences of every classified attention module.

    The n-th transformer call at one timestep is CFG pass n (a batched-CFG pipeline has only pass 0); differences are
    taken within a pass. Call `finish_generation()` after each generation; `profile()` averages them.
    """

    def __init__(self, transformer: torch.nn.Module, adapter: ModelAdapter | None = None) -> None:
        self.transformer = transformer
        self.adapter = adapter or adapter_for(transformer)
        self.modules = {n: (k, b) for n, k, b, _ in self.adapter.iter_modules(transformer) if k in ATTENTION_KINDS}
        if not self.modules:
            raise ProfileError(f"adapter {self.adapter.name!r} classifies no attention module of "
                               f"{type(transformer).__name__}; nothing to profile")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._timestep: float | None = None
        self._pass = 0
        self._last: dict[tuple[str, int], torch.Tensor] = {}
        self._current: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
        self._generations: list[tuple[list[float], dict[str, list[float]]]] = []

    def __enter__(self) -> "AttentionProfiler":
        self._handles.append(self.transformer.register_forward_pre_hook(self._on_transformer, with_kwargs=True))
        for name, module in self.transformer.named_modules():
            if name in self.modules:
                self._handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_transformer(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:
            raise ProfileError("the transformer was called without `timestep`; the profiler cannot follow the steps")
        t = float(t.float().max()) if isinstance(t, torch.Tensor) else float(t)
        self._pass = self._pass + 1 if t == self._timestep else 0
        self._timestep = t

    def _recorder(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            out = _first_tensor(output)
            if out is None or self._timestep is None:
                return
            key = (name, self._pass)
            out = out.detach().float()
            prev = self._last.get(key)
            if prev is not None and prev.shape == out.shape:
                self._current[key].append((self._timestep, float((out - prev).pow(2).mean())))
            self._last[key] = out.clone()

        return hook

    def finish_generation(self) -> None:
        """Close one generation: average its CFG passes and keep its per-step curves."""
        if not self._current:
            raise ProfileError("no attention output was recorded; did the generation run inside the profiler?")
        per_module: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
        for (name, _), series in self._current.items():
            per_module[name].append(series)
        timesteps = [t for t, _ in next(iter(per_module.values()))[0]]
        curves = {}
        for name, passes in per_module.items():
            if any(len(s) != len(timesteps) for s in passes):
                raise ProfileError(f"module {name} recorded an uneven number of steps across CFG passes")
            curves[name] = [sum(s[i][1] for s in passes) / len(passes) for i in range(len(timesteps))]
        self._generations.append((timesteps, curves))
        self._current.clear()
        self._last.clear()
        self._timestep, self._pass = None, 0

    def profile(self, meta: dict[str, Any] | None = None) -> AttentionProfile:
        if not self._generations:
            raise ProfileError("no finished generation to average; call finish_generation() after each one")
        timesteps = self._generations[0][0]
        if any(len(ts) != len(timesteps) for ts, _ in self._generations):
            raise ProfileError("profiled generations used different step counts; profile with one num_inference_steps")
        n = len(self._generations)
        layers = {
            name: {"kind": kind, "block": block,
                   "diff": [sum(g[1][name][i] for g in self._generations) / n for i in range(len(timesteps))]}
            for name, (kind, block) in self.modules.items()
            if all(name in g[1] for g in self._generations)
        }
        return AttentionProfile(timesteps, layers, n, type(self.transformer).__name__, dict(meta or {}))


def profile_generations(
    transformer: torch.nn.Module, generate: Callable[[str, int], Any], prompts: list[str], seeds: list[int],
    adapter: ModelAdapter | None = None, meta: dict[str, Any] | None = None,
) -> AttentionProfile:
    """Run `generate(prompt, seed)` for every prompt and seed under the profiler and average the curves."""
    with AttentionProfiler(transformer, adapter) as profiler:
        for prompt in prompts:
            for seed in seeds:
                generate(prompt, seed)
                profiler.finish_generation()
    return profiler.profile(meta)


def plot_profile(profile: AttentionProfile, path: str | Path, size: tuple[int, int] = (640, 400)) -> None:
    """Write a PNG of the per-kind curves (log y axis, timestep decreasing to the right, as sampling runs)."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    curves = {k: profile.kind_curve(k) for k in profile.kinds}
    values = [v for c in curves.values() for v in c if v > 0]
    if not values:
        raise ProfileError("every difference is zero; nothing to plot on a log axis")
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = hi if hi > lo else lo + 1
    ts = profile.timesteps
    t_max, t_min = max(ts), min(ts)

    def xy(t: float, v: float) -> tuple[float, float]:
        x = left + (t_max - t) / max(t_max - t_min, 1e-9) * (w - left - right)
        y = top + (hi - math.log10(max(v, 10.0**lo))) / (hi - lo) * (h - top - bottom)
        return x, y

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for e in range(lo, hi + 1):
        _, y = xy(t_max, 10.0**e)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"1e{e}", fill="black")
    for t in ts[:: max(1, len(ts) // 8)]:
        x, _ = xy(t, 10.0**lo)
        draw.line([x, h - bottom, x, h - bottom + 4], fill="black")
        draw.text((x - 10, h - bottom + 6), f"{t:.0f}", fill="black")
    draw.text((w // 2 - 40, h - 20), "timestep", fill="black")
    draw.text((left, 4), f"attention output MSE between steps ({profile.model}, n={profile.generations})",
              fill="black")
    for i, (kind, curve) in enumerate(curves.items()):
        colour = PLOT_COLOURS.get(kind, (0, 0, 0))
        draw.line([xy(t, v) for t, v in zip(ts, curve)], fill=colour, width=2)
        draw.text((left + 90 * i, 20), f"- {kind}", fill=colour)  # legend above the plot, clear of the curves
    img.save(path, format="PNG")
