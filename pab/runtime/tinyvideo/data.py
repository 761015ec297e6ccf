"""Procedural clips for the tiny text-to-video model: one shape, one colour, one direction.

Every clip is drawn from its caption's three attributes and a seed, so the dataset is infinite, deterministic and
needs no download. The conventions here (palette, image axes, what "up" means) are the ground truth that the
objective check in `pab.runtime.tools.quality` measures generated videos against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pab.runtime.request.params import prompt_words

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
SHAPES: tuple[str, ...] = ("square", "disc", "triangle")
# Image axes: x grows to the right, y grows downwards, so "up" is -y.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# Area of each shape as a fraction of shape_size**2: the objective check tells shapes apart by their area.
SHAPE_AREA: dict[str, float] = {"square": 1.0, "disc": 0.785, "triangle": 0.5}

# Held out of training: each colour, shape and direction appears here, never this combination.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "disc", "up"),
    ("green", "triangle", "left"),
    ("blue", "square", "down"),
    ("yellow", "disc", "right"),
    ("red", "triangle", "right"),
    ("green", "square", "up"),
    ("blue", "disc", "left"),
    ("yellow", "triangle", "down"),
)


@dataclass(frozen=True)
class ClipSpec:
    """Geometry of every clip: the model's input size is fixed by it."""

    size: int = 16
    num_frames: int = 4
    shape_size: float = 6.0
    speed: float = 2.5  # pixels per frame
    supersample: int = 4


DEFAULT_SPEC = ClipSpec()


def caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """Return (colour, shape, direction) named in a caption; raises ValueError naming what is missing."""
    words = prompt_words(text)
    found = []
    for kind, names in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS)):
        hits = [w for w in words if w in names]
        if len(hits) != 1:
            raise ValueError(
                f"caption {text!r} must name exactly one {kind} out of {sorted(names)}; found {hits or 'none'}"
            )
        found.append(hits[0])
    return found[0], found[1], found[2]


def all_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def train_combinations() -> list[tuple[str, str, str]]:
    held = set(HELD_OUT)
    return [combo for combo in all_combinations() if combo not in held]


def _shape_masks(shape_ids: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, half: float) -> torch.Tensor:
    """Inside-mask of each clip's shape; `shape_ids` [B] indexes SHAPES, dx/dy [B, F, h, w] are offsets from centre."""
    square = (dx.abs() <= half) & (dy.abs() <= half)
    disc = dx * dx + dy * dy <= half * half
    triangle = (dy.abs() <= half) & (dx.abs() <= (dy + half) / 2)  # apex up, base down
    sid = shape_ids.view(-1, 1, 1, 1)
    return torch.where(sid == 0, square, torch.where(sid == 1, disc, triangle))


def render_clips(
    combos: list[tuple[str, str, str]], starts: torch.Tensor, spec: ClipSpec = DEFAULT_SPEC
) -> torch.Tensor:
    """Render clips as float [B, F, 3, H, W] in [0, 1]; `starts` [B, 2] holds each shape's centre (x, y) in frame 0."""
    for combo in combos:
        if combo[0] not in COLOURS or combo[1] not in SHAPES or combo[2] not in DIRECTIONS:
            raise ValueError(f"unknown (colour, shape, direction) {combo}; see COLOURS, SHAPES, DIRECTIONS")
    s, ss = spec.size, spec.supersample
    coords = (torch.arange(s * ss, dtype=torch.float32) + 0.5) / ss
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    unit = torch.tensor([DIRECTIONS[c[2]] for c in combos])  # [B, 2]
    steps = torch.arange(spec.num_frames, dtype=torch.float32) * spec.speed
    centres = starts.view(-1, 1, 2) + unit.view(-1, 1, 2) * steps.view(1, -1, 1)  # [B, F, 2]
    dx = xx - centres[..., 0, None, None]
    dy = yy - centres[..., 1, None, None]
    shape_ids = torch.tensor([SHAPES.index(c[1]) for c in combos])
    mask = _shape_masks(shape_ids, dx, dy, spec.shape_size / 2).float()  # [B, F, h, w]
    cover = torch.nn.functional.avg_pool2d(mask, ss)  # anti-aliased coverage [B, F, H, W]
    rgb = torch.tensor([COLOURS[c[0]] for c in combos]).view(-1, 1, 3, 1, 1)
    return cover.unsqueeze(2) * rgb


def render_clip(
    colour: str, shape: str, direction: str, start: tuple[float, float], spec: ClipSpec = DEFAULT_SPEC
) -> torch.Tensor:
    """Render one clip as float [F, 3, H, W] in [0, 1]; `start` is the shape's centre (x, y) in frame 0."""
    return render_clips([(colour, shape, direction)], torch.tensor([start], dtype=torch.float32), spec)[0]


def sample_start(direction: str, generator: torch.Generator, spec: ClipSpec = DEFAULT_SPEC) -> tuple[float, float]:
    """A start centre that keeps the whole shape inside the frame for the whole clip."""
    half = spec.shape_size / 2
    travel = spec.speed * (spec.num_frames - 1)
    lo, hi = half, spec.size - half
    ux, uy = DIRECTIONS[direction]
    pos = []
    for u in (ux, uy):
        a, b = (lo, hi - travel) if u > 0 else (lo + travel, hi) if u < 0 else (lo, hi)
        pos.append(a + (b - a) * torch.rand((), generator=generator).item())
    return pos[0], pos[1]


def make_batch(
    batch_size: int,
    generator: torch.Generator,
    combos: list[tuple[str, str, str]] | None = None,
    spec: ClipSpec = DEFAULT_SPEC,
) -> tuple[torch.Tensor, list[str]]:
    """`batch_size` clips as float [B, 3, F, H, W] in [-1, 1] (the model's layout) and their captions."""
    combos = combos if combos is not None else train_combinations()
    picks = [combos[int(i)] for i in torch.randint(len(combos), (batch_size,), generator=generator)]
    starts = torch.tensor([sample_start(c[2], generator, spec) for c in picks], dtype=torch.float32)
    clips = render_clips(picks, starts, spec).permute(0, 2, 1, 3, 4)  # [B, 3, F, H, W]
    return clips * 2 - 1, [caption(*c) for c in picks]
