"""Quality metrics for generated videos: PSNR and SSIM against the full model, and the preset evaluation harness.

PSNR/SSIM compare a PAB output against the full model's output from the same seed (how much broadcasting changed
the video). The objective check needs no reference: for the tiny shapes model it measures, from the pixels alone,
whether the requested colour dominates, the colour centroid moves in the requested direction, and the blob has the
requested shape - using the ground-truth conventions of `pab.runtime.tinyvideo.data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pab.runtime.request.params import GenerationParams
from pab.runtime.tinyvideo.data import parse_caption
from pab.runtime.tinyvideo.objective import accuracy, as_float, objective_check


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos must have the same shape to compare; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"videos must be [frames, height, width, 3]; got shape {tuple(a.shape)}")


def psnr(video: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole clip (data range 1); `inf` for identical clips."""
    a, b = as_float(video), as_float(reference)
    _check_pair(a, b)
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(video: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, window: int = 7) -> float:
    """Mean SSIM over frames and channels (Wang et al. 2004 constants, uniform `window` x `window` window)."""
    a, b = as_float(video), as_float(reference)
    _check_pair(a, b)
    x = a.permute(0, 3, 1, 2).reshape(-1, 1, *a.shape[1:3])  # every frame/channel as one grey image
    y = b.permute(0, 3, 1, 2).reshape(-1, 1, *b.shape[1:3])
    win = min(window, x.shape[-1], x.shape[-2])
    pool = lambda z: F.avg_pool2d(z, win, stride=1)  # noqa: E731 - local shorthand
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


# --- the quality harness: PAB output vs the full model's output from the same seed -------------------------------


@dataclass
class EvalRow:
    r"""
    One PAB setting measured over a prompt x seed set.

    Args:
        name: the preset or config name. psnr, ssim: means over videos against the full model's video from the same
        seed (`inf` / 1.0 when identical). accuracy: the objective check's fractions (None when the prompts do not
        name a colour, shape and direction). broadcast: fraction of attention calls that reused a cached output.
        denoise_s: mean seconds per video (wall clock on this machine; noisy on a shared CPU).
    """

    name: str
    config: dict
    psnr: float
    ssim: float
    accuracy: dict[str, float] | None
    broadcast: float
    denoise_s: float
    videos: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _objective(prompts_seeds: list[tuple[str, int]], videos: list[np.ndarray]) -> dict[str, float] | None:
    try:
        wants = [parse_caption(p) for p, _ in prompts_seeds]
    except ValueError:
        return None
    return accuracy([objective_check(v, w) for v, w in zip(videos, wants)])


def run_config(generator, prompts_seeds: list[tuple[str, int]], pab, references: list[np.ndarray] | None = None,
               **params) -> tuple[EvalRow, list[np.ndarray]]:
    """Generate every (prompt, seed) with `pab` (preset name, dict or PABConfig) through a `VideoGenerator`."""
    config = generator.resolve_pab(pab)
    videos, hits, seconds = [], [], []
    for prompt, seed in prompts_seeds:
        result = generator.generate(GenerationParams(prompt=prompt, seed=seed, **params), pab=config)
        videos.append(result.frames)
        hits.append(result.stats.pab.attention.hit_rate if result.stats.pab is not None else 0.0)
        seconds.append(result.stats.timings.denoise_s)
    refs = references if references is not None else videos
    if len(refs) != len(videos):
        raise ValueError(f"references must pair with the prompt x seed set: {len(refs)} vs {len(videos)} videos")
    psnrs = [psnr(v, r) for v, r in zip(videos, refs)]
    row = EvalRow(
        name=config.name, config=config.to_dict(),
        psnr=math.inf if any(math.isinf(p) for p in psnrs) and all(math.isinf(p) for p in psnrs)
        else float(np.mean([p for p in psnrs if not math.isinf(p)])),
        ssim=float(np.mean([ssim(v, r) for v, r in zip(videos, refs)])),
        accuracy=_objective(prompts_seeds, videos), broadcast=float(np.mean(hits)),
        denoise_s=float(np.mean(seconds)), videos=len(videos),
    )
    return row, videos


def evaluate_presets(generator, presets: list, prompts: list[str], seeds: list[int], **params) -> list[EvalRow]:
    """The full model ("none") first, then each preset or config against it, on every prompt x seed."""
    pairs = [(p, s) for p in prompts for s in seeds]
    full, references = run_config(generator, pairs, "none", **params)
    full.name = "full (no PAB)"
    rows = [full]
    for preset in presets:
        rows.append(run_config(generator, pairs, preset, references, **params)[0])
    return rows


LPIPS_NOTE = "LPIPS: not reported - its pretrained weights cannot be downloaded here (no hub access)."


def rows_to_markdown(rows: list[EvalRow]) -> str:
    """A table per the BENCHMARKS.md layout: PSNR, SSIM, broadcast fraction, objective accuracy, time."""
    lines = ["| setting | PSNR (dB) | SSIM | attention broadcast | accuracy (colour+direction) | colour | direction "
             "| shape | s/video |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r.accuracy or {}
        pct = lambda k: f"{100 * acc[k]:.1f}%" if k in acc else "n/a"  # noqa: E731
        lines.append(f"| {r.name} | {r.psnr:.2f} | {r.ssim:.4f} | {100 * r.broadcast:.1f}% | {pct('accuracy')} | "
                     f"{pct('colour')} | {pct('direction')} | {pct('shape')} | {r.denoise_s:.3f} |")
    return "\n".join(lines) + "\n"
