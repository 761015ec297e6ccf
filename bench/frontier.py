"""Speed-quality frontier: our PAB modes against diffusers' PAB and TaylorSeer, side by side in one process.

On the shipped tiny-shapes model (default): the held-out captions x seeds, every method generating the same videos
from the same seeds through the same pipeline call; PSNR/SSIM against the full model's video from the same seed and
the objective colour/shape/direction check. Timing: each round runs every method once over all videos, methods
interleaved (rotated each round) so machine noise hits all alike; the speedup is the median of per-round ratios to
the full model of the same round, with their min..max, in CPU time (one torch thread) and in wall time. Compute is counted, not estimated: attention processor calls
(computed attention) and transformer forwards that ran, for ours and the peers alike.

    python bench/frontier.py                              # tiny-shapes, 8 captions x 2 seeds, 5 rounds
    python bench/frontier.py --model latte-random --rounds 3 --layers 2     # speed only, bench/pab_speed.py's Latte
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig
from diffusers.hooks import HookRegistry, apply_pyramid_attention_broadcast

from pab import PABConfig, apply_pab, get_preset

HERE = Path(__file__).parent
OURS = ("PAB-246", "PAB-357", "PAB-246f", "PAB-357f", "PAB-333", "PAB-333f", "step2f", "step3f", "step4f")
PEERS = ("diffusers PAB 2/4/6", "TaylorSeer attention i3 o1", "TaylorSeer lite i3", "TaylorSeer lite i5")
ATTENTION = r"(temporal_)?transformer_blocks\.\d+\.attn\d"  # Latte's attention modules, for TaylorSeer's patterns


@dataclass
class Variant:
    """One method: how to switch it on and off on the shared transformer."""

    name: str
    enter: Callable[[], None]
    leave: Callable[[], None]
    stats: Callable[[], dict[str, Any]] = field(default=lambda: {})


def our_variant(transformer: torch.nn.Module, name: str, config: PABConfig | None = None) -> Variant:
    box: dict[str, Any] = {}

    def enter() -> None:
        box["handle"] = apply_pab(transformer, config or get_preset(name, model="latte"))

    return Variant(name, enter, lambda: box.pop("handle").remove(), lambda: box["handle"].stats.to_dict())


def peer_variants(transformer: torch.nn.Module, current_timestep: Callable[[], float]) -> list[Variant]:
    """diffusers' PAB (ranges 2/4/6, Latte's reference window) and TaylorSeer (float32 factors) on the transformer."""
    window = get_preset("PAB-246", model="latte").spatial.window

    def diffusers_pab() -> None:
        apply_pyramid_attention_broadcast(transformer, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=4,
            cross_attention_block_skip_range=6, spatial_attention_timestep_skip_range=window,
            temporal_attention_timestep_skip_range=window, cross_attention_timestep_skip_range=window,
            current_timestep_callback=current_timestep))

    def leave_diffusers_pab() -> None:
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook("pyramid_attention_broadcast", recurse=True)
        transformer._reset_stateful_cache()

    def taylorseer(**kwargs: Any) -> Callable[[], None]:
        return lambda: transformer.enable_cache(TaylorSeerCacheConfig(taylor_factors_dtype=torch.float32, **kwargs))

    names = iter(PEERS)
    return [
        Variant(next(names), diffusers_pab, leave_diffusers_pab),
        Variant(next(names), taylorseer(cache_interval=3, max_order=1, cache_identifiers=[ATTENTION]),
                transformer.disable_cache),
        Variant(next(names), taylorseer(cache_interval=3, use_lite_mode=True), transformer.disable_cache),
        Variant(next(names), taylorseer(cache_interval=5, use_lite_mode=True), transformer.disable_cache),
    ]


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
"""CPU time of this process (one torch thread: the work done, what other jobs on a shared machine do not inflate
much) and wall time (what a user waits for on this machine, load included)."""


def interleave(variants: list[Variant], items: list[Any], run: Callable[[Any], Any], rounds: int,
               keep: Callable[[Variant, int, Any], None] | None = None) -> dict[str, dict[str, list[float]]]:
    """Seconds per clock, variant and round, summed over `items`. Variants run back to back on each item, in an order
    that rotates item after item and round after round, so load changes on a shared machine hit every variant alike.
    `keep(variant, round, output)` sees each item's output while the variant is on."""
    times = {clock: {v.name: [0.0] * rounds for v in variants} for clock in CLOCKS}
    for r in range(rounds):
        for i, item in enumerate(items):
            shift = (r + i) % len(variants)
            for v in variants[shift:] + variants[:shift]:
                v.enter()
                try:
                    start = {clock: read() for clock, read in CLOCKS.items()}
                    output = run(item)
                    for clock, read in CLOCKS.items():
                        times[clock][v.name][r] += read() - start[clock]
                    if keep is not None:
                        keep(v, r, output)
                finally:
                    v.leave()
        print(f"round {r + 1}/{rounds} (cpu s): " + ", ".join(f"{k} {t[r]:.2f}" for k, t in times["cpu"].items()),
              flush=True)
    return times


def speedups(times: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, float, float]]:
    """Median, min and max over rounds of baseline time / variant time within the same round."""
    out = {}
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(times[baseline], ts)]
        out[name] = (statistics.median(ratios), min(ratios), max(ratios))
    return out


class ComputeCounter:
    """Counts attention processor calls (attention actually computed), transformer calls, and the calls in which any
    attention computed (the forward really ran; TaylorSeer lite's skipped blocks and our step skips do not)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.modules = 0
        self.reset()
        for name, module in transformer.named_modules():
            if hasattr(module, "processor") and name.rsplit(".", 1)[-1].startswith("attn"):
                module.set_processor(_Counting(module.processor, self))
                self.modules += 1
        transformer.register_forward_pre_hook(lambda m, a: self.start_call())

    def reset(self) -> None:
        self.attention = self.forwards = self.calls = 0
        self.ran = False

    def start_call(self) -> None:
        self.calls += 1
        self.ran = False

    def computed(self) -> None:
        self.attention += 1
        self.forwards += not self.ran
        self.ran = True

    def fractions(self) -> tuple[float, float]:
        """(attention computed / attention calls had every forward run, forwards run / transformer calls)."""
        calls = max(self.calls, 1)
        return self.attention / (self.modules * calls), self.forwards / calls


class _Counting:
    def __init__(self, inner: Any, counter: ComputeCounter) -> None:
        self.inner, self.counter = inner, counter

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.counter.computed()
        return self.inner(*args, **kwargs)


def _tiny_shapes(args: argparse.Namespace) -> tuple[Any, Callable[[Any], Any], list]:
    from pab.runtime.pipelines import load_pipeline
    from pab.runtime.tinyvideo.data import HELD_OUT, caption

    pipe = load_pipeline("tiny-shapes")

    def run(pair: tuple[str, int]) -> np.ndarray:
        out = pipe(pair[0], generator=torch.Generator().manual_seed(pair[1]), num_inference_steps=args.steps,
                   guidance_scale=args.guidance_scale, output_type="np")
        return out.frames[0]

    return pipe.transformer, run, [(caption(*c), s) for c in HELD_OUT for s in args.seeds]


def _latte_random(args: argparse.Namespace) -> tuple[Any, Callable[[Any], Any], list]:
    from pab_speed import Loop, build  # bench/pab_speed.py's random Latte and its DDIM loop

    for key, value in {"hidden": 384, "heads": 6, "latent": 32, "frames": 8, "text_len": 32, "caption_dim": 128,
                       "device": "cpu", "dtype": torch.float32}.items():
        setattr(args, key, getattr(args, key, None) or value)
    model = build(args)
    loop = Loop(model, args)

    def run(_: Any) -> None:
        with model.cache_context("cfg"):  # TaylorSeer keeps its state per cache context and needs one
            loop.run()

    return model, run, [None]


def quality_rows(videos: dict[str, list[np.ndarray]], pairs: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
    from pab.runtime.tinyvideo.data import parse_caption
    from pab.runtime.tinyvideo.objective import accuracy, objective_check
    from pab.runtime.tools.quality import psnr, ssim

    full = videos["full"]
    out = {}
    for name, vids in videos.items():
        psnrs = [psnr(v, r) for v, r in zip(vids, full)]
        finite = [p for p in psnrs if np.isfinite(p)]
        out[name] = {"psnr": float(np.mean(finite)) if finite else float("inf"),
                     "ssim": float(np.mean([ssim(v, r) for v, r in zip(vids, full)])),
                     "accuracy": accuracy([objective_check(v, parse_caption(p)) for v, (p, _) in zip(vids, pairs)])}
    return out


def table(names: list[str], times: dict[str, dict[str, list[float]]], compute: dict[str, tuple[float, float]],
          quality: dict[str, dict[str, Any]]) -> str:
    head = ("| method | speedup, CPU time (median [min..max]) | speedup, wall | attention computed | "
            "forwards computing attention |")
    rule = "|---|---|---|---|---|"
    if quality:
        head += " PSNR dB | SSIM | colour+direction | shape |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    cpu, wall = speedups(times["cpu"], names[0]), speedups(times["wall"], names[0])
    for name in names:
        att, fwd = compute.get(name, (float("nan"), float("nan")))
        line = (f"| {name} | {cpu[name][0]:.2f}x [{cpu[name][1]:.2f}..{cpu[name][2]:.2f}] | "
                f"{wall[name][0]:.2f}x [{wall[name][1]:.2f}..{wall[name][2]:.2f}] | {100 * att:.0f}% | {100 * fwd:.0f}% |")
        if quality:
            q = quality[name]
            line += (f" {q['psnr']:.2f} | {q['ssim']:.4f} | {100 * q['accuracy']['accuracy']:.0f}% | "
                     f"{100 * q['accuracy']['shape']:.0f}% |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny-shapes", "latte-random"], default="tiny-shapes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=None, help="denoising steps (tiny-shapes 25, latte-random 20)")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, default=2, help="latte-random: spatial (and temporal) blocks")
    p.add_argument("--ours", nargs="+", default=list(OURS), help="our presets to include")
    p.add_argument("--peers", nargs="*", default=list(PEERS), help=f"peers to include, of {list(PEERS)}")
    p.add_argument("--config", action="append", default=[], help="also run this PABConfig JSON file (e.g. calibrated)")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    args.steps = args.steps or (25 if args.model == "tiny-shapes" else 20)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    t0 = time.time()
    transformer, run, items = (_tiny_shapes if args.model == "tiny-shapes" else _latte_random)(args)
    current = {"t": 1000.0}
    transformer.register_forward_pre_hook(
        lambda m, a, kw: current.__setitem__("t", float(kw["timestep"].max())), with_kwargs=True)
    counter = ComputeCounter(transformer)
    variants = [Variant("full", lambda: None, lambda: None)]
    variants += [our_variant(transformer, n) for n in args.ours]
    for path in args.config:
        cfg = PABConfig.from_dict(json.loads(Path(path).read_text()))
        variants.append(our_variant(transformer, cfg.name, cfg))
    variants += [v for v in peer_variants(transformer, lambda: current["t"]) if v.name in args.peers]
    run(items[0])  # warm-up
    videos: dict[str, list[Any]] = {v.name: [] for v in variants}
    stats: dict[str, dict[str, Any]] = {}
    compute: dict[str, list[float]] = {v.name: [0.0, 0.0] for v in variants}

    def keep(v: Variant, r: int, output: Any) -> None:
        if r == 0:
            videos[v.name].append(output)
            stats[v.name] = v.stats()
            for i, f in enumerate(counter.fractions()):
                compute[v.name][i] += f / len(items)
        counter.reset()

    counter.reset()
    times = interleave(variants, items, run, args.rounds, keep)
    names = [v.name for v in variants]
    quality = quality_rows(videos, items) if args.model == "tiny-shapes" else {}
    text = table(names, times, {k: tuple(v) for k, v in compute.items()}, quality)
    _write(args, argv, text, times, compute, quality, stats, time.time() - t0)
    return 0


def _write(args, argv, text, times, compute, quality, stats, wall_s) -> None:
    stem = f"frontier_{args.model}{'_' + args.tag if args.tag else ''}"
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    command = f"python bench/frontier.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip()
    header = (f"Command: `{command}` ({platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
              f"{args.rounds} interleaved rounds, {wall_s:.0f} s wall; the 2-core machine was shared with other "
              f"jobs, so absolute times move - the ratios are measured within each round, CPU time is the steadier "
              f"clock).\n\n")
    (out / f"{stem}.md").write_text(header + text)
    (out / f"{stem}.json").write_text(json.dumps({"command": command, "times": times, "compute": compute,
                                                  "quality": quality, "stats": stats}, indent=1, default=str) + "\n")
    sys.stdout.write("\n" + header + text)
    print(f"wrote {out / (stem + '.md')}")


if __name__ == "__main__":
    sys.exit(main())
