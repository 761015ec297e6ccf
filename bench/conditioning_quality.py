"""Image-to-video and remix quality on the trained tiny shapes model (the embedded default): writes
bench/results/conditioning_tiny-shapes.{md,json} (the section of QUALITY.md).

    python bench/conditioning_quality.py                       # 8 seeds, strengths 0.5..0.9 (about a minute on CPU)
    python bench/conditioning_quality.py --seeds 0 1 --strengths 0.8

Image-to-video: the reference is frame 0 of a clip the training renderer draws (`data.render_clip`: a shape at a
random start that keeps it in frame), the prompt names the same colour, shape and a direction; we measure the first
frame's PSNR against the reference, the objective check (`objective.objective_check`: colour dominates and the
centroid moves the prompt's way) and how far frame 1's centroid is from the reference's (the shape continues from
where the picture put it). Remix: the source is "a red square moving left" from a seed, the remix "a blue square
moving left" from the same seed at each strength; we measure the objective check (blue, moving left) and the
Pearson correlation of the centroid tracks (x and y per frame, each centred) of source and remix.
Every generation goes through the pipeline's own `image=` / `video=` + `strength=` arguments (what the server passes).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pab.runtime.tinyvideo.data import COLOURS, DIRECTIONS, SHAPES, caption, render_clip, sample_start
from pab.runtime.tinyvideo.objective import objective_check, video_statistics
from pab.runtime.tinyvideo.pipeline import load_tiny_shapes
from pab.runtime.tools.quality import psnr

HERE = Path(__file__).parent


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def centroid_track(video: np.ndarray) -> np.ndarray:
    """[2, F]: the foreground centroid's x and y per frame (`objective.video_statistics`)."""
    stats = video_statistics(video)
    return np.array([stats["centroid_x"], stats["centroid_y"]])


def track_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two centroid tracks, each axis centred on its own mean (so a track's position does not
    count, only its motion); NaN when a frame is blank or a track does not move."""
    x = (a - a.mean(axis=1, keepdims=True)).ravel()
    y = (b - b.mean(axis=1, keepdims=True)).ravel()
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def image_to_video(pipe, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(10_000 + seed)
        for colour in COLOURS:
            for shape in SHAPES:
                direction = list(DIRECTIONS)[(seed + SHAPES.index(shape)) % len(DIRECTIONS)]
                start = sample_start(direction, gen)
                ref = _uint8(render_clip(colour, shape, direction, start)[0].permute(1, 2, 0).numpy())
                prompt = caption(colour, shape, direction)
                out = _uint8(pipe(prompt, image=Image.fromarray(ref), generator=torch.Generator().manual_seed(seed)
                                  ).frames[0])
                plain = _uint8(pipe(prompt, generator=torch.Generator().manual_seed(seed)).frames[0])
                check, base = objective_check(out, (colour, shape, direction)), objective_check(plain, (colour, shape, direction))
                ref_xy, out_xy = centroid_track(ref[None]), centroid_track(out)
                rows.append({"seed": seed, "prompt": prompt, "psnr_first": psnr(out[:1], ref[None]), "ok": check.ok,
                             "direction_ok": check.direction_ok, "colour_ok": check.colour_ok,
                             "frame1_offset_px": float(np.hypot(*(out_xy[:, 1] - ref_xy[:, 0]))),
                             "plain_psnr_first": psnr(plain[:1], ref[None]), "plain_ok": base.ok})
    return rows


def remix(pipe, seeds: list[int], strengths: list[float], source: str, target: str) -> list[dict]:
    rows = []
    want = tuple(target.split()[1:2] + target.split()[2:3] + target.split()[-1:])
    for seed in seeds:
        src = _uint8(pipe(source, generator=torch.Generator().manual_seed(seed)).frames[0])
        frames = [Image.fromarray(f) for f in src]
        fresh = _uint8(pipe(target, generator=torch.Generator().manual_seed(seed + 1000)).frames[0])
        for strength in [*strengths, "fresh"]:
            out = fresh if strength == "fresh" else _uint8(
                pipe(target, video=frames, strength=strength, generator=torch.Generator().manual_seed(seed)).frames[0])
            check = objective_check(out, want)
            a, b = centroid_track(src), centroid_track(out)
            rows.append({"seed": seed, "strength": strength, "ok": check.ok, "colour": check.colour,
                         "direction": check.direction, "track_correlation": track_correlation(a, b),
                         "centroid_distance_px": float(np.nanmean(np.hypot(*(a - b))))})
    return rows


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def summary(i2v: list[dict], rmx: list[dict], strengths: list[float]) -> dict:
    psnrs = [r["psnr_first"] for r in i2v]
    out: dict = {"i2v": {"n": len(i2v), "psnr_first_median": _median(psnrs) if any(map(math.isfinite, psnrs)) else math.inf,
                   "first_frame_exact": sum(math.isinf(p) for p in psnrs),
                   "objective_ok": sum(r["ok"] for r in i2v) / len(i2v),
                   "direction_ok": sum(r["direction_ok"] for r in i2v) / len(i2v),
                   "frame1_offset_px_median": _median([r["frame1_offset_px"] for r in i2v]),
                   "plain_psnr_first_median": _median([r["plain_psnr_first"] for r in i2v]),
                   "plain_objective_ok": sum(r["plain_ok"] for r in i2v) / len(i2v)},
           "remix": {}}
    for s in [*strengths, "fresh"]:
        part = [r for r in rmx if r["strength"] == s]
        out["remix"][str(s)] = {"n": len(part), "objective_ok": sum(r["ok"] for r in part) / len(part),
                                "track_correlation_median": _median([r["track_correlation"] for r in part]),
                                "centroid_distance_px_median": _median([r["centroid_distance_px"] for r in part]),
                                "blank_or_still": sum(not math.isfinite(r["track_correlation"]) for r in part)}
    return out


def markdown(result: dict, command: str) -> str:
    i2v = result["summary"]["i2v"]
    psnr_text = "inf (exact)" if math.isinf(i2v["psnr_first_median"]) else f"{i2v['psnr_first_median']:.2f} dB"
    lines = [f"Command: `{command}` ({result['platform']}).", "",
             "| image-to-video (tiny-shapes) | value |", "|---|---|",
             f"| clips (colours x shapes x seeds) | {i2v['n']} |",
             f"| first frame vs reference, PSNR median | {psnr_text} ({i2v['first_frame_exact']}/{i2v['n']} exact); "
             f"without the reference (same prompt and seed) {i2v['plain_psnr_first_median']:.2f} dB |",
             f"| objective check (colour and direction) | {i2v['objective_ok']:.1%} (without the reference "
             f"{i2v['plain_objective_ok']:.1%}) |",
             f"| direction as the prompt says | {i2v['direction_ok']:.1%} |",
             f"| frame 1 centroid vs reference centroid, median (the shape moves 2.5 px a frame in training) "
             f"| {i2v['frame1_offset_px_median']:.2f} px |", "",
             f"| remix `{result['source']}` -> `{result['target']}`, strength | objective check (colour, direction) "
             "| centroid-track correlation, median | centroid distance to the source, median | tracks blank or still |",
             "|---|---|---|---|---|"]
    for s, row in result["summary"]["remix"].items():
        label = "text-to-video, another seed (baseline)" if s == "fresh" else s
        lines.append(f"| {label} | {row['objective_ok']:.1%} | {row['track_correlation_median']:.3f} | "
                     f"{row['centroid_distance_px_median']:.2f} px | {row['blank_or_still']}/{row['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    p.add_argument("--source", default="a red square moving left")
    p.add_argument("--target", default="a blue square moving left")
    p.add_argument("--out", type=Path, default=HERE / "results" / "conditioning_tiny-shapes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_tiny_shapes()
    i2v = image_to_video(pipe, args.seeds)
    rmx = remix(pipe, args.seeds, args.strengths, args.source, args.target)
    result = {"platform": f"{platform.machine()}, torch {torch.__version__}, CPU", "seeds": args.seeds,
              "source": args.source, "target": args.target,
              "summary": summary(i2v, rmx, args.strengths), "i2v": i2v, "remix": rmx}
    command = "python bench/conditioning_quality.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, command.strip()))
    print(markdown(result, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
