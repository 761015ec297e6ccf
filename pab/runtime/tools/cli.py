"""`pab profile`, `pab calibrate`, `pab eval`: the measurement subcommands, as argparse builders.

`register(subparsers)` adds all three; the `pab` console script picks it up through `serve_app/commands/`. Each
command loads the model through `pab.runtime.pipelines.load_pipeline` (embedded name or a diffusers folder), so it measures
the same generation path the server runs. Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pab.config import PABConfig

DEFAULT_MODEL = "tiny-shapes"
DEFAULT_SEEDS = [0, 1, 2, 3]
GENERIC_PROMPTS = ["a cat walking on the beach", "a red car driving through the city at night"]


def default_prompts(model: str) -> list[str]:
    """The tiny shapes model's held-out captions (never trained on), else a couple of generic prompts."""
    # lazy: the `pab` console script (`pab serve` too) imports this module at start-up; torch only when run
    from pab.runtime.tinyvideo.pipeline import is_tiny_video_folder

    if model == DEFAULT_MODEL or is_tiny_video_folder(model):
        from pab.runtime.tinyvideo.data import HELD_OUT, caption  # lazy, as above

        return [caption(*c) for c in HELD_OUT]
    return list(GENERIC_PROMPTS)


def load_model(model: str, dtype: str | None = None) -> Any:
    """`pab.runtime.pipelines.load_pipeline`, plus folders exported by `pab.runtime.tinyvideo.train --export`."""
    # lazy: the `pab` console script (`pab serve` too) imports this module at start-up; torch only when run
    from pab.runtime.pipelines.loading import DTYPES, load_pipeline
    from pab.runtime.tinyvideo.pipeline import is_tiny_video_folder, load_tiny_shapes

    if is_tiny_video_folder(model):
        pipe = load_tiny_shapes(path=model)
        return pipe.to(dtype=DTYPES[dtype]) if dtype else pipe
    return load_pipeline(model, dtype=dtype)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"embedded model name or diffusers folder ({DEFAULT_MODEL})")
    p.add_argument("--prompt", action="append", default=None, dest="prompts",
                   help="a prompt (repeat for several; default: the model's evaluation prompts)")
    p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="seeds per prompt")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _setup(args: argparse.Namespace) -> tuple[Any, list[str], dict[str, Any]]:
    # lazy: the `pab` console script (`pab serve` too) imports this module at start-up; torch only when run
    import torch

    from pab.runtime.pipelines import VideoGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    generator = VideoGenerator(load_model(args.model, args.dtype))
    params = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance_scale))
              if v is not None}
    return generator, args.prompts or default_prompts(args.model), params


def _write_json(path: str, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")


# ---- pab profile -----------------------------------------------------------------------------------------------------
def build_profile(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="measure attention output differences between steps (JSON + PNG)")
    _add_common(p)
    p.add_argument("--pab", default="none", help="profile with this PAB preset applied (default: none)")
    p.add_argument("-o", "--output", default="profile.json", help="JSON output path")
    p.add_argument("--plot", default=None, help="PNG output path (default: the JSON path with .png)")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args: argparse.Namespace) -> int:
    # lazy: the `pab` console script (`pab serve` too) imports this module at start-up; torch only when run
    from pab.runtime.pipelines import GenerationParams
    from pab.runtime.tools.profiler import plot_profile, profile_generations

    generator, prompts, params = _setup(args)

    def generate(prompt: str, seed: int) -> None:
        generator.generate(GenerationParams(prompt=prompt, seed=seed, **params), pab=args.pab)

    meta = {"model": args.model, "prompts": prompts, "seeds": args.seeds, "pab": args.pab, **params}
    profile = profile_generations(generator.pipeline.transformer, generate, prompts, args.seeds, meta=meta)
    profile.save(args.output)
    plot = args.plot or str(Path(args.output).with_suffix(".png"))
    plot_profile(profile, plot)
    for kind, s in profile.summary().items():
        print(f"{kind:9s} first {s['first']:.3g}  min {s['min']:.3g} at t={s['min_timestep']:.0f}  last {s['last']:.3g}")
    print(f"wrote {args.output} and {plot} ({profile.generations} generations)")
    return 0


# ---- pab calibrate ---------------------------------------------------------------------------------------------------
def build_calibrate(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="choose PAB windows/ranges from a profile under a PSNR floor")
    _add_common(p)
    p.add_argument("--profile", required=True, help="JSON written by `pab profile` for this model")
    p.add_argument("--psnr-floor", type=float, default=None,
                   help="minimum mean PSNR (dB) against the full model (default: the baseline preset's own PSNR)")
    p.add_argument("--baseline", default="PAB-246", help="preset to beat (default: PAB-246)")
    p.add_argument("--max-trials", type=int, default=20, help="candidate configs to measure at most (all modes)")
    p.add_argument("--modes", nargs="+", default=["pyramid", "forecast", "step", "step-forecast"],
                   help="candidate families: pyramid (reuse), forecast (pyramids extrapolating), step and "
                        "step-forecast (the whole transformer output reused or extrapolated)")
    p.add_argument("--attention-share", type=float, default=None,
                   help="share of a forward spent in attention, for the cost estimate (default 0.35)")
    p.add_argument("-o", "--output", default="calibrated.json", help="where to write the PABConfig JSON")
    p.set_defaults(func=run_calibrate)
    return p


def run_calibrate(args: argparse.Namespace) -> int:
    # lazy: the `pab` console script (`pab serve` too) imports this module at start-up; torch only when run
    from pab.runtime.tools.calibrate import calibrate
    from pab.runtime.tools.profiler import AttentionProfile

    profile = AttentionProfile.load(args.profile)
    generator, prompts, params = _setup(args)
    steps = params.pop("num_inference_steps", None)
    extra = {} if args.attention_share is None else {"attention_share": args.attention_share}
    result = calibrate(generator, profile, prompts, args.seeds, psnr_floor=args.psnr_floor, baseline=args.baseline,
                       max_trials=args.max_trials, num_inference_steps=steps, modes=tuple(args.modes), **extra,
                       **params)
    print("measured frontier (estimated cost = share of the full model's transformer time):")
    for row in result.frontier:
        print(f"  {row['name']:42s} cost {row['cost']:.3f}  PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}")
    print(result.verdict)
    if result.config is None:
        _write_json(Path(args.output).with_suffix(".report.json"), result.to_dict())
        return 1
    _write_json(args.output, result.config.to_dict())
    _write_json(Path(args.output).with_suffix(".report.json"), result.to_dict())
    print(f"wrote {args.output} (use it with --pab \"$(cat {args.output})\" or `pab eval --config {args.output}`)")
    return 0


# ---- pab eval --------------------------------------------------------------------------------------------------------
def build_eval(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="PSNR/SSIM vs the full model and objective accuracy, per PAB preset")
    _add_common(p)
    p.add_argument("--presets", nargs="+", default=["PAB-246", "PAB-357", "PAB-579", "reference"])
    p.add_argument("--config", action="append", default=[], help="also evaluate this PABConfig JSON file")
    p.add_argument("-o", "--output", default=None, help="write the rows as JSON here")
    p.add_argument("--markdown", default=None, help="write the table as Markdown here")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    # lazy: the `pab` console script (`pab serve` too) imports this module at start-up; torch only when run
    from pab.runtime.tools.quality import LPIPS_NOTE, evaluate_presets, rows_to_markdown

    generator, prompts, params = _setup(args)
    settings: list[Any] = list(args.presets)
    for path in args.config:
        settings.append(PABConfig.from_dict(json.loads(Path(path).read_text())))
    rows = evaluate_presets(generator, settings, prompts, args.seeds, **params)
    table = rows_to_markdown(rows)
    sys.stdout.write(table + LPIPS_NOTE + "\n")
    if args.output:
        _write_json(args.output, {"model": args.model, "prompts": prompts, "seeds": args.seeds, "params": params,
                                  "rows": [r.to_dict() for r in rows], "lpips": LPIPS_NOTE})
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


def register(subparsers: Any) -> None:
    """Add `profile`, `calibrate` and `eval` to the `pab` console script."""
    for build in (build_profile, build_calibrate, build_eval):
        build(subparsers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pab-tools", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
