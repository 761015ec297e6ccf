"""The objective prompt-following check of the tiny shapes model, from the pixels alone: whether the requested
colour dominates, the colour centroid moves in the requested direction, and the blob has the requested shape, using
the ground-truth conventions of `data`. It needs no reference video (PSNR/SSIM are in `pab.runtime.tools.quality`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pab.runtime.tinyvideo.data import COLOURS, DEFAULT_SPEC, DIRECTIONS, SHAPE_AREA, ClipSpec


def as_float(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [F,H,W,3] (0..255) or float in [0,1] -> float64 tensor in [0,1] with the same layout."""
    t = torch.as_tensor(np.asarray(video))
    return t.double() / 255.0 if t.dtype == torch.uint8 else t.double()



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
    v = as_float(video)
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
    w = _foreground(as_float(video), threshold)
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
    cover = as_float(video).max(dim=-1).values
    areas = cover.sum(dim=(1, 2)) / spec.shape_size**2
    if float(areas.max()) < 0.1:
        return None
    area = float(areas.median())
    return min(SHAPE_AREA, key=lambda n: abs(SHAPE_AREA[n] - area))


def video_statistics(video: np.ndarray | torch.Tensor, threshold: float = 0.25) -> dict[str, list[float]]:
    """Summary numbers of a video that a reference test can store instead of the video: per-channel mean and std,
    and the foreground centroid (x, y) per frame (NaN where a frame is blank)."""
    v = as_float(video)
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
