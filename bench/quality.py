"""PAB quality on the trained tiny shapes model: profile, calibrate, then evaluate every preset; writes
bench/results/quality_<model>[_tag].md (a section for QUALITY.md) and its JSON/PNG.

    python bench/quality.py                    # tiny-shapes, held-out prompts x 4 seeds, guidance 3 (minutes on CPU)
    python bench/quality.py --guidance-scale 1.5 --seeds 0 1 --tag g1.5

Every number is measured by the same code the CLI runs (`pab profile`, `pab calibrate`, `pab eval`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from pab.runtime.tools.calibrate import calibrate
from pab.runtime.tools.cli import default_prompts, load_model
from pab.runtime.pipelines import GenerationParams, VideoGenerator
from pab.runtime.tools.profiler import plot_profile, profile_generations
from pab.runtime.tools.quality import LPIPS_NOTE, evaluate_presets, rows_to_markdown

HERE = Path(__file__).parent
PAPER = """| method (Open-Sora, paper) | PSNR | SSIM | LPIPS | speedup |
|---|---|---|---|---|
| PAB-246 | 27.04 | 0.8847 | 0.0925 | 1.34x |
| PAB-357 | 24.50 | 0.8405 | 0.1471 | 1.37x |
| PAB-579 | 23.58 | 0.8220 | 0.1743 | 1.43x |
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-shapes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--calibration-seeds", type=int, nargs="+", default=[100, 101],
                   help="seeds for calibration (disjoint from the evaluation seeds, so the result is not tuned on them)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--max-trials", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix for the result files")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    generator = VideoGenerator(load_model(args.model))
    prompts = default_prompts(args.model)
    params = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance_scale)) if v}
    steps = params.get("num_inference_steps", generator.defaults["num_inference_steps"])
    guidance = params.get("guidance_scale", generator.defaults["guidance_scale"])
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = f"quality_{Path(args.model).name}{'_' + args.tag if args.tag else ''}"

    def run(prompt: str, seed: int) -> None:
        generator.generate(GenerationParams(prompt=prompt, seed=seed, **params), pab="none")

    profile = profile_generations(generator.pipeline.transformer, run, prompts, args.seeds,
                                  meta={"model": args.model, "steps": steps, "guidance_scale": guidance})
    profile.save(out / f"{stem}_profile.json")
    plot_profile(profile, out / f"{stem}_profile.png")

    cal = calibrate(generator, profile, prompts, args.calibration_seeds, max_trials=args.max_trials,
                    num_inference_steps=steps, **{k: v for k, v in params.items() if k != "num_inference_steps"})
    settings: list = ["PAB-246", "PAB-357", "PAB-579", "reference"]
    if cal.config is not None:
        settings.append(cal.config)
        (out / f"{stem}_calibrated.json").write_text(json.dumps(cal.config.to_dict(), indent=1) + "\n")
    rows = evaluate_presets(generator, settings, prompts, args.seeds, **params)
    (out / f"{stem}_eval.json").write_text(json.dumps({
        "rows": [r.to_dict() for r in rows], "calibration": cal.to_dict(), "profile_summary": profile.summary(),
    }, indent=1, default=str) + "\n")

    full = rows[0].accuracy or {}
    lines = [
        f"## {args.model}: guidance {guidance}, {steps} DDIM steps{' (' + args.tag + ')' if args.tag else ''}",
        "",
        f"Command: `python bench/quality.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"({platform.machine()}, torch {torch.__version__}, {time.time() - t0:.0f} s wall on a shared CPU). "
        f"Prompts: the {len(prompts)} held-out captions (never trained on) x seeds {args.seeds}; "
        f"PSNR/SSIM against the full model's video from the same seed. {LPIPS_NOTE}",
        "",
        rows_to_markdown(rows),
        "Attention-difference profile (mean squared difference of each module's output between consecutive steps; "
        f"`{stem}_profile.png`):",
        "",
        "| kind | first step | minimum (at t) | last step |",
        "|---|---|---|---|",
        *[f"| {k} | {s['first']:.3g} | {s['min']:.3g} (t={s['min_timestep']:.0f}) | {s['last']:.3g} |"
          for k, s in profile.summary().items()],
        "",
        f"Calibration (seeds {args.calibration_seeds}, disjoint from the evaluation seeds): {cal.verdict}.",
        "",
    ]
    if cal.config is not None:
        lines += ["Calibrated config: `" + json.dumps(cal.config.to_dict()) + "`", ""]
    pab246 = next(r for r in rows if r.name == "PAB-246")
    if full and pab246.accuracy:
        gap = 100 * (full["accuracy"] - pab246.accuracy["accuracy"])
        lines += [f"Objective accuracy: full model {100 * full['accuracy']:.1f}%, PAB-246 "
                  f"{100 * pab246.accuracy['accuracy']:.1f}% ({gap:+.1f} points; target: within 5).", ""]
    section = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(section)
    sys.stdout.write(section)
    print(f"wrote {out / (stem + '.md')}; QUALITY.md quotes it beside the paper's table:\n{PAPER}")
    return 0 if all(math.isfinite(r.psnr) for r in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
