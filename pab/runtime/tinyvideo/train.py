"""Train the tiny shapes model from a seed, resumably, and export its EMA weights in the diffusers layout.

    python -m pab.runtime.tinyvideo.train --out .pab/train            # train (resumes from .pab/train/last.pt if present)
    python -m pab.runtime.tinyvideo.train --out .pab/train --export pab/runtime/tinyvideo/weights [--checkpoint ...]

The data are procedural (`pab.runtime.tinyvideo.data`), so a seed fixes the whole run: the initial weights, every batch, the
noise, the caption dropout. Checkpoints hold the RNG states, so a resumed run continues the same sequence.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from pab.runtime.tinyvideo.objective import accuracy, objective_check
from pab.runtime.tinyvideo.data import HELD_OUT, caption, make_batch, train_combinations
from pab.runtime.tinyvideo.model import build_text_encoder, build_transformer, sample_scheduler, train_scheduler
from pab.runtime.tinyvideo.pipeline import TinyVideoPipeline, reference_statistics, write_sample_sheet
from pab.runtime.tinyvideo.sampling import sample, to_uint8_frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(".pab/train"), help="checkpoint and log folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=40000, help="stop after this many optimiser steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--high-t-fraction", type=float, default=0.0,
                   help="fraction of each batch whose timestep is drawn from [--high-t-min, 1000) instead of [0, 1000): "
                        "the layout (where the shape is in each frame, so its direction) is decided at high noise")
    p.add_argument("--high-t-min", type=int, default=500)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--eval-every", type=int, default=1000, help="steps between held-out accuracy checks")
    p.add_argument("--export", type=Path, default=None, help="write the EMA weights here and exit")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint to export (default: OUT/best.pt)")
    return p.parse_args(argv)


def evaluate(transformer, text_encoder, seed: int = 1234, steps: int = 20, guidance: float = 3.0) -> dict:
    """Objective accuracy on the held-out captions and on as many training captions (one seed each)."""
    train = train_combinations()[:: max(1, len(train_combinations()) // len(HELD_OUT))][: len(HELD_OUT)]
    report = {}
    for name, combos in (("held_out", list(HELD_OUT)), ("train", train)):
        caps = [caption(*c) for c in combos]
        clips = sample(transformer, text_encoder, sample_scheduler(), caps, [seed + i for i in range(len(caps))],
                       num_steps=steps, guidance=guidance)
        report[name] = accuracy([objective_check(to_uint8_frames(c), w) for c, w in zip(clips, combos)])
    return report


def sample_timesteps(batch: int, num_train_timesteps: int, high_fraction: float = 0.0, high_min: int = 500) -> torch.Tensor:
    """Uniform timesteps, except that a `high_fraction` of the batch is drawn from [high_min, num_train_timesteps)."""
    t = torch.randint(0, num_train_timesteps, (batch,))
    n_high = int(round(batch * high_fraction))
    if n_high:
        t[:n_high] = torch.randint(high_min, num_train_timesteps, (n_high,))
    return t


def _state(step, model, enc, ema_model, ema_enc, opt, data_gen, args, extra) -> dict:
    return {
        "step": step, "model": model.state_dict(), "text_encoder": enc.state_dict(),
        "ema_model": ema_model.state_dict(), "ema_text_encoder": ema_enc.state_dict(), "optimizer": opt.state_dict(),
        "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(), "args": vars(args) | {"out": str(args.out)},
        **extra,
    }


def _save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(checkpoint: Path, out: Path) -> None:
    """EMA weights -> a `TinyVideoPipeline` folder (model_index.json, transformer/, text_encoder/, scheduler/)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    a = state["args"]
    model = build_transformer(hidden=a["hidden"], layers=a["layers"], heads=a["heads"])
    enc = build_text_encoder()
    model.load_state_dict(state["ema_model"])
    enc.load_state_dict(state["ema_text_encoder"])
    pipe = TinyVideoPipeline(model, enc, sample_scheduler())
    pipe.save_pretrained(out)
    (out / "reference_stats.json").write_text(json.dumps(reference_statistics(pipe), indent=1) + "\n")
    write_sample_sheet(pipe, out / "samples_held_out.png")
    meta = {k: state.get(k) for k in ("step", "eval")} | {"args": a}
    (out / "training.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(f"exported step {state['step']} from {checkpoint} to {out}")


def _train_step(args: argparse.Namespace, step: int, model: Any, enc: Any, opt: Any, sched: Any, params: list,
                data_gen: torch.Generator, combos: list) -> float:
    """One optimiser step on a fresh batch (v-prediction, caption dropout, warm-up); returns the loss."""
    x0, caps = make_batch(args.batch, data_gen, combos)
    drop = torch.rand(args.batch) < args.caption_dropout
    caps = ["" if d else c for c, d in zip(caps, drop.tolist())]
    noise = torch.randn_like(x0)
    t = sample_timesteps(args.batch, sched.config.num_train_timesteps, args.high_t_fraction, args.high_t_min)
    xt = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t)
    pred = model(xt, timestep=t, encoder_hidden_states=enc.encode(caps)).sample
    loss = torch.nn.functional.mse_loss(pred, target)
    for g in opt.param_groups:
        g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = build_transformer(hidden=args.hidden, layers=args.layers, heads=args.heads)
    enc = build_text_encoder()
    ema_model, ema_enc = copy.deepcopy(model).eval(), copy.deepcopy(enc).eval()
    params = list(model.parameters()) + list(enc.parameters())
    ema_params = list(ema_model.parameters()) + list(ema_enc.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    sched = train_scheduler()
    step, best = 0, -1.0
    last = args.out / "last.pt"
    if last.exists():
        s = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(s["model"]), enc.load_state_dict(s["text_encoder"])
        ema_model.load_state_dict(s["ema_model"]), ema_enc.load_state_dict(s["ema_text_encoder"])
        opt.load_state_dict(s["optimizer"])
        data_gen.set_state(s["data_rng"]), torch.set_rng_state(s["torch_rng"])
        step, best = s["step"], s.get("best", -1.0)
        print(f"resumed from {last} at step {step}", flush=True)
    log = open(args.out / "log.jsonl", "a")
    combos = train_combinations()
    t_ckpt, t0, losses = time.time(), time.time(), []
    model.train(), enc.train()
    while step < args.steps:
        losses.append(_train_step(args, step, model, enc, opt, sched, params, data_gen, combos))
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema_params, params):
                e.lerp_(p, 1 - decay)
        if step % 100 == 0:
            rec = {"step": step, "loss": sum(losses) / len(losses), "s_per_step": (time.time() - t0) / len(losses)}
            log.write(json.dumps(rec) + "\n"), log.flush()
            losses, t0 = [], time.time()
        extra = {}
        if step % args.eval_every == 0:
            te = time.time()
            ev = evaluate(ema_model, ema_enc)
            score = ev["held_out"]["accuracy"] + ev["train"]["accuracy"] + 0.5 * (
                ev["held_out"]["shape"] + ev["train"]["shape"])
            log.write(json.dumps({"step": step, "eval": ev, "score": score, "eval_s": time.time() - te}) + "\n")
            log.flush()
            extra = {"eval": ev}
            if score >= best:
                best = score
                _save(_state(step, model, enc, ema_model, ema_enc, opt, data_gen, args, extra | {"best": best}),
                      args.out / "best.pt")
            model.train(), enc.train()
        if extra or time.time() - t_ckpt > args.checkpoint_minutes * 60 or step == args.steps:
            _save(_state(step, model, enc, ema_model, ema_enc, opt, data_gen, args, extra | {"best": best}), last)
            t_ckpt = time.time()
    log.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.export is not None:
        export(args.checkpoint or args.out / "best.pt", args.export)
    else:
        train(args)


if __name__ == "__main__":
    main()
