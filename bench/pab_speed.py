"""PAB speed on a Latte-architecture transformer: interleaved A/B runs in one process, medians, Amdahl bound.

Runs the denoising loop of a random-weight `LatteTransformer3DModel` (CFG batch of 2, DDIM timesteps) under four
variants, interleaved round by round so that machine noise hits all alike:
  none          no PAB
  pab246        our PAB-246 (Latte reference windows)
  pab246+mlp    our PAB-246 plus the Latte reference MLP broadcast
  diffusers246  diffusers' own PyramidAttentionBroadcast with ranges 2/4/6 and the same windows (MLP off)
It profiles the share of each attention kind and of the MLPs in an un-broadcast forward, and compares each measured
speedup with the Amdahl bound 1 / (1 - sum(share_k * broadcast_fraction_k)).

    python bench/pab_speed.py                       # CPU config (a few minutes on 2 cores)
    python bench/pab_speed.py --paper-scale --device cuda --dtype bfloat16   # Latte-1 scale on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from typing import Callable

import torch
from diffusers import DDIMScheduler, LatteTransformer3DModel
from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from pab import adapter_for, apply_pab, get_preset
from pab.runtime.models.tiny import tiny_latte_transformer


def build(args: argparse.Namespace) -> LatteTransformer3DModel:
    model = tiny_latte_transformer(
        num_layers=args.layers,
        video_length=args.frames,
        num_attention_heads=args.heads,
        attention_head_dim=args.hidden // args.heads,
        cross_attention_dim=args.hidden,
        sample_size=args.latent,
        caption_channels=args.caption_dim,
    )
    return model.to(args.device, args.dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Loop:
    """The denoising loop's transformer calls, with the current timestep exposed for diffusers' PAB callback."""

    def __init__(self, model: LatteTransformer3DModel, args: argparse.Namespace) -> None:
        self.model = model
        self.device = args.device
        scheduler = DDIMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(args.steps)
        self.timesteps = [int(t) for t in scheduler.timesteps]
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2, 4, args.frames, args.latent, args.latent, generator=g).to(args.device, args.dtype)
        self.text = torch.randn(2, args.text_len, args.caption_dim, generator=g).to(args.device, args.dtype)
        self.current_timestep = 0

    def run(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            for t in self.timesteps:
                self.current_timestep = t
                ts = torch.full((2,), t, device=self.device)
                self.model(self.x, timestep=ts, encoder_hidden_states=self.text, return_dict=False)
        _sync(self.device)
        return time.perf_counter() - start


def profile_shares(loop: Loop) -> dict[str, float]:
    """Fraction of an un-broadcast forward spent in each attention kind and in the MLPs (forward hooks + sync)."""
    adapter = adapter_for(loop.model)
    spent: dict[str, float] = defaultdict(float)
    handles = []
    for _, kind, _, module in adapter.iter_modules(loop.model):
        starts: list[float] = []

        def pre(mod, inputs, starts=starts):
            _sync(loop.device)
            starts.append(time.perf_counter())

        def post(mod, inputs, output, kind=kind, starts=starts):
            _sync(loop.device)
            spent[kind] += time.perf_counter() - starts.pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    total = loop.run()
    for h in handles:
        h.remove()
    return {k: v / total for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--layers", type=int, default=4, help="spatial blocks (and as many temporal blocks)")
    parser.add_argument("--latent", type=int, default=32, help="latent height/width; tokens per frame = (latent/2)^2")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--caption-dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--paper-scale", action="store_true", help="Latte-1: hidden 1152, 16 heads, 28 layers, 16x512x512")
    args = parser.parse_args()
    if args.paper_scale:
        args.hidden, args.heads, args.layers, args.latent, args.frames, args.caption_dim, args.text_len = (
            1152, 16, 28, 64, 16, 4096, 120)
    args.dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)

    model = build(args)
    loop = Loop(model, args)
    ours = get_preset("PAB-246", model="latte")
    ours_mlp = get_preset("PAB-246+mlp", model="latte")
    handle = apply_pab(model, get_preset("none"))
    loop.run()  # warm-up
    shares = profile_shares(loop)

    def use_ours(cfg) -> Callable[[], None]:
        return lambda: handle.configure(cfg)

    def use_diffusers() -> None:
        handle.remove()
        apply_pyramid_attention_broadcast(model, PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=4,
            cross_attention_block_skip_range=6,
            spatial_attention_timestep_skip_range=ours.spatial.window,
            temporal_attention_timestep_skip_range=ours.temporal.window,
            cross_attention_timestep_skip_range=ours.cross.window,
            current_timestep_callback=lambda: loop.current_timestep,
        ))

    def leave_diffusers() -> None:
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(model).remove_hook("pyramid_attention_broadcast", recurse=True)
        model._reset_stateful_cache()

    # what diffusers' PAB actually does on Latte (its temporal attention gets the spatial range): the fair hook-cost
    # comparison is ours with the same effective ranges
    as_diffusers = ours.replace(temporal=ours.temporal.__class__(2, ours.temporal.window), name="PAB-226")
    variants = {"none": use_ours(get_preset("none")), "pab246": use_ours(ours), "pab246+mlp": use_ours(ours_mlp),
                "pab226": use_ours(as_diffusers)}
    times: dict[str, list[float]] = defaultdict(list)
    fractions: dict[str, dict[str, float]] = {}
    for round_index in range(args.rounds):
        for name, enter in variants.items():
            enter()
            times[name].append(loop.run())
            print(f"round {round_index + 1}: {name} {times[name][-1]:.2f} s", flush=True)
            fractions[name] = {k: s.hit_rate for k, s in handle.stats.kinds.items()}
        use_diffusers()
        times["diffusers246"].append(loop.run())
        print(f"round {round_index + 1}: diffusers246 {times['diffusers246'][-1]:.2f} s", flush=True)
        leave_diffusers()
        handle = apply_pab(model, get_preset("none"))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"config: hidden {args.hidden}, {args.layers}+{args.layers} blocks, {(args.latent // 2) ** 2} tokens/frame, "
          f"{args.frames} frames, CFG batch 2, {args.steps} DDIM steps, {args.device}/{str(args.dtype)[6:]}, "
          f"{args.rounds} interleaved rounds")
    print("profiled share of forward time: " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(shares.items())))
    print()
    print("| variant | median s | speedup vs none | broadcast fraction (spatial/temporal/cross/mlp) | Amdahl bound | measured/bound |")
    print("|---|---|---|---|---|---|")
    for name in ("none", "pab246", "pab246+mlp", "pab226", "diffusers246"):
        speedup = med["none"] / med[name]
        if name in fractions:
            frac = fractions[name]
            saved = sum(shares.get(k, 0.0) * frac.get(k, 0.0) for k in shares)
            bound = 1.0 / (1.0 - saved)
            fr = "/".join(f"{frac.get(k, 0.0):.2f}" for k in ("spatial", "temporal", "cross", "mlp"))
            print(f"| {name} | {med[name]:.3f} | {speedup:.3f}x | {fr} | {bound:.3f}x | {speedup / bound:.3f} |")
        else:
            print(f"| {name} | {med[name]:.3f} | {speedup:.3f}x | (temporal gets the spatial range, see NOTES) | - | - |")
    print()
    print(f"ours PAB-246 / diffusers PAB-246 (MLP off): {med['pab246'] / med['diffusers246']:.3f}")
    print(f"ours PAB-226 / diffusers PAB-246 (same effective ranges): {med['pab226'] / med['diffusers246']:.3f}")
    print("raw times: " + "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()))


if __name__ == "__main__":
    main()
