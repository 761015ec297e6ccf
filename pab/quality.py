"""Quality metrics for generated videos: PSNR, SSIM, and the objective prompt-following check.

PSNR/SSIM compare a PAB output against the full model's output from the same seed (how much broadcasting changed
the video). The objective check needs no reference: for the tiny shapes model it measures, from the pixels alone,
whether the requested colour dominates, the colour centroid moves in the requested direction, and the blob has the
requested shape - using the ground-truth conventions of `pab.tinyvideo.data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pab.tinyvideo.data import COLOURS, DEFAULT_SPEC, DIRECTIONS, SHAPE_AREA, ClipSpec


def _as_float(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [F,H,W,3] (0..255) or float in [0,1] -> float64 tensor in [0,1] with the same layout."""
    t = torch.as_tensor(np.asarray(video))
    return t.double() / 255.0 if t.dtype == torch.uint8 else t.double()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos must have the same shape to compare; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"videos must be [frames, height, width, 3]; got shape {tuple(a.shape)}")


def psnr(video: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over the whole clip (data range 1); `inf` for identical clips."""
    a, b = _as_float(video), _as_float(reference)
    _check_pair(a, b)
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(video: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, window: int = 7) -> float:
    """Mean SSIM over frames and channels (Wang et al. 2004 constants, uniform `window` x `window` window)."""
    a, b = _as_float(video), _as_float(reference)
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


@dataclass(frozen=True)
class ObjectiveResult:
    """What the pixels show, next to what the caption asked for."""

    colour: str | None
    direction: str | None
    shape: str | None
    want: tuple[str, str, str]

    @property
    def colour_ok(self) -> bool:
        return self.colour == self.want[0]

    @property
    def shape_ok(self) -> bool:
        return self.shape == self.want[1]

    @property
    def direction_ok(self) -> bool:
        return self.direction == self.want[2]

    @property
    def ok(self) -> bool:
        """The issue's criterion: requested colour dominates and the centroid moves the requested way."""
        return self.colour_ok and self.direction_ok


def _foreground(frames: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-pixel foreground weight [F,H,W]: brightness above the (dark) background."""
    return (frames.max(dim=-1).values - threshold).clamp(min=0)


def dominant_colour(video: np.ndarray | torch.Tensor, threshold: float = 0.25) -> str | None:
    """Palette colour nearest to the brightness-weighted mean foreground colour; None for a blank video."""
    v = _as_float(video)
    w = _foreground(v, threshold)
    if float(w.sum()) == 0.0:
        return None
    mean = (v * w[..., None]).sum(dim=(0, 1, 2)) / w.sum()
    mean = mean / mean.max().clamp(min=1e-8)  # compare hue, not brightness
    names = list(COLOURS)
    dist = [float((mean - torch.tensor(COLOURS[n], dtype=mean.dtype)).pow(2).sum()) for n in names]
    return names[int(np.argmin(dist))]


def centroid_direction(video: np.ndarray | torch.Tensor, threshold: float = 0.25, min_shift: float = 1.0) -> str | None:
    """Direction of the foreground centroid's motion from first to last frame (image axes: +y is down).

    None when the blob is missing from a frame or moves less than `min_shift` pixels overall.
    """
    w = _foreground(_as_float(video), threshold)
    mass = w.sum(dim=(1, 2))
    if bool((mass == 0).any()):
        return None
    h, wd = w.shape[1:]
    ys = torch.arange(h, dtype=w.dtype).view(1, h, 1)
    xs = torch.arange(wd, dtype=w.dtype).view(1, 1, wd)
    cx, cy = (w * xs).sum(dim=(1, 2)) / mass, (w * ys).sum(dim=(1, 2)) / mass
    shift = torch.stack([cx[-1] - cx[0], cy[-1] - cy[0]])
    if float(shift.abs().max()) < min_shift:
        return None
    names = list(DIRECTIONS)
    scores = [float(shift @ torch.tensor(DIRECTIONS[n], dtype=shift.dtype)) for n in names]
    return names[int(np.argmax(scores))]


def shape_of(video: np.ndarray | torch.Tensor, spec: ClipSpec = DEFAULT_SPEC) -> str | None:
    """Shape whose area is nearest the blob's (median over frames of the summed coverage); None if blank.

    Coverage is the brightest channel, which is 1 inside every palette colour, so blur keeps the area.
    """
    cover = _as_float(video).max(dim=-1).values
    areas = cover.sum(dim=(1, 2)) / spec.shape_size**2
    if float(areas.max()) < 0.1:
        return None
    area = float(areas.median())
    return min(SHAPE_AREA, key=lambda n: abs(SHAPE_AREA[n] - area))


def video_statistics(video: np.ndarray | torch.Tensor, threshold: float = 0.25) -> dict[str, list[float]]:
    """Summary numbers of a video that a reference test can store instead of the video: per-channel mean and std,
    and the foreground centroid (x, y) per frame (NaN where a frame is blank)."""
    v = _as_float(video)
    w = _foreground(v, threshold)
    mass = w.sum(dim=(1, 2))
    ys = torch.arange(v.shape[1], dtype=v.dtype).view(1, -1, 1)
    xs = torch.arange(v.shape[2], dtype=v.dtype).view(1, 1, -1)
    cx = torch.where(mass > 0, (w * xs).sum(dim=(1, 2)) / mass.clamp(min=1e-12), torch.nan)
    cy = torch.where(mass > 0, (w * ys).sum(dim=(1, 2)) / mass.clamp(min=1e-12), torch.nan)
    return {"channel_mean": v.mean(dim=(0, 1, 2)).tolist(), "channel_std": v.std(dim=(0, 1, 2)).tolist(),
            "centroid_x": cx.tolist(), "centroid_y": cy.tolist()}


def objective_check(
    video: np.ndarray | torch.Tensor, want: tuple[str, str, str], spec: ClipSpec = DEFAULT_SPEC
) -> ObjectiveResult:
    """Measure colour, direction and shape of a [F,H,W,3] video against the requested (colour, shape, direction)."""
    return ObjectiveResult(dominant_colour(video), centroid_direction(video), shape_of(video, spec), want)


def accuracy(results: list[ObjectiveResult]) -> dict[str, float]:
    """Fractions in [0, 1]: overall (colour and direction), and per attribute."""
    if not results:
        raise ValueError("accuracy needs at least one ObjectiveResult; got an empty list")
    n = len(results)
    return {
        "accuracy": sum(r.ok for r in results) / n,
        "colour": sum(r.colour_ok for r in results) / n,
        "direction": sum(r.direction_ok for r in results) / n,
        "shape": sum(r.shape_ok for r in results) / n,
        "n": n,
    }


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
    from pab.tinyvideo.data import parse_caption

    try:
        wants = [parse_caption(p) for p, _ in prompts_seeds]
    except ValueError:
        return None
    return accuracy([objective_check(v, w) for v, w in zip(videos, wants)])


def run_config(generator, prompts_seeds: list[tuple[str, int]], pab, references: list[np.ndarray] | None = None,
               **params) -> tuple[EvalRow, list[np.ndarray]]:
    """Generate every (prompt, seed) with `pab` (preset name, dict or PABConfig) through a `VideoGenerator`."""
    from pab.pipelines import GenerationParams

    config = generator.resolve_pab(pab)
    videos, hits, seconds = [], [], []
    for prompt, seed in prompts_seeds:
        result = generator.generate(GenerationParams(prompt=prompt, seed=seed, **params), pab=config)
        videos.append(result.frames)
        hits.append(result.stats.get("attention", {}).get("hit_rate", 0.0))
        seconds.append(result.timings["denoise_s"])
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
