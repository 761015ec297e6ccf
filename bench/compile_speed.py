"""torch.compile stacked with PAB: eager vs compiled, with and without PAB, side by side in one process.

Every variant has its own copy of the model (same weights), so switching costs nothing; they run interleaved item by
item (`bench/frontier.py`'s `interleave`). Compiled variants compile through `PABHandle.compile` (PAB decides outside
the compiled region); "naive" compiles the whole hooked transformer (`transformer.compile()`), the way a user would
without this, to show the graph breaks it takes; ", input guards" variants compile with `guards="inputs"` (dynamo
keeps only the guards on each call's arguments, `pab.compiled`). Warm-up = first generation (compiles) minus a steady
one.

    python bench/compile_speed.py                               # tiny-shapes, 8 captions x 1 seed, 5 rounds
    python bench/compile_speed.py --model latte-random --layers 2 --rounds 3     # bench/pab_speed.py's Latte
    python bench/compile_speed.py --per-call --rounds 15        # tiny-shapes' transformer calls, call by call

`--per-call` times the transformer alone, where PAB acts: the transformer calls of one generation per caption are
recorded once (inputs, timestep, CFG pass), then every variant's copy replays them, the variants taking turns call by
call (in an order that rotates), so load on a shared machine hits each variant's every call alike; the whole-pipeline
figures interleave whole generations, whose noise on 2 shared cores is as large as PAB's gain.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch._dynamo.utils import counters

from frontier import CLOCKS, Variant, interleave, speedups  # bench/frontier.py
from pab import apply_pab, get_preset

HERE = Path(__file__).parent
CPP = {"cpp_wrapper": True}
FROZEN = {"freezing": True}  # weights as constants: CPU linear weights prepacked once, no parameter inputs
FROZEN_CPP = {"freezing": True, "cpp_wrapper": True}
# name -> (preset or None for the bare model, how to compile: None eager, "pab" PABHandle.compile, "naive" whole
# model, "plain" the bare model; inductor options; PABHandle.compile's guards)
VARIANTS: dict[str, tuple[str | None, str | None, dict[str, Any] | None, str]] = {
    "eager none": (None, None, None, "full"),
    "eager PAB-246": ("PAB-246", None, None, "full"),
    "eager step3f": ("step3f", None, None, "full"),
    "compiled plain (one graph, no hooks)": (None, "plain", None, "full"),
    "naive compile, PAB-246 hooks inside": ("PAB-246", "naive", None, "full"),
}
OPTION_SETS = {"": None, ", cpp_wrapper": CPP, ", freezing": FROZEN, ", freezing+cpp_wrapper": FROZEN_CPP}
GUARD_SUFFIXES = {"full": "", "inputs": ", input guards"}
SUFFIXES = [f"{o}{g}" for o in OPTION_SETS for g in GUARD_SUFFIXES.values()]
"""What follows "compiled none" / "compiled PAB-246" in the names of a pair of compiled variants."""
for _suffix, _options in OPTION_SETS.items():
    for _guards, _guard_suffix in GUARD_SUFFIXES.items():
        for _preset in ("none", "PAB-246", "step3f"):
            VARIANTS[f"compiled {_preset}{_suffix}{_guard_suffix}"] = (_preset, "pab", _options, _guards)
DEFAULT_VARIANTS = ["eager none", "eager PAB-246", "eager step3f", "compiled plain (one graph, no hooks)",
                    *(f"compiled {p}{s}" for s in ("", ", cpp_wrapper", ", cpp_wrapper, input guards")
                      for p in ("none", "PAB-246", "step3f")),
                    "compiled none, freezing", "compiled PAB-246, freezing", "compiled none, freezing+cpp_wrapper",
                    "compiled PAB-246, freezing+cpp_wrapper", "compiled step3f, freezing+cpp_wrapper",
                    "naive compile, PAB-246 hooks inside"]


def _graphs() -> tuple[int, int]:
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _wall(run: Callable[[Any], Any], items: list[Any]) -> float:
    start = time.perf_counter()
    for item in items:
        run(item)
    return time.perf_counter() - start


def prepare(transformer: torch.nn.Module, preset: str | None, how: str | None, options: dict | None,
            guards: str) -> None:
    """Hook and/or compile one copy of the transformer as the variant says."""
    handle = apply_pab(transformer, get_preset(preset, model="latte")) if preset else None
    extra = {"options": options} if options else {}
    if how == "pab":
        handle.compile(guards=guards, fullgraph=True, **extra)
    elif how in ("plain", "naive"):
        transformer.compile(**extra)


def build_variants(make_runner: Callable[[], tuple[torch.nn.Module, Callable[[Any], float]]], items: list[Any],
                   names: list[str], models: dict[str, torch.nn.Module] | None = None
                   ) -> tuple[list[Variant], dict[str, Callable[[Any], float]], dict[str, dict]]:
    """One copy per variant, warmed up one after the other so each one's graphs and compile time are its own
    (each variant's transformer goes into `models` when given)."""
    variants, runners, warm, outputs = [], {}, {}, {}
    for name in names:
        preset, how, options, guards = VARIANTS[name]
        transformer, run = make_runner()
        if models is not None:
            models[name] = transformer
        prepare(transformer, preset, how, options, guards)
        graphs0, breaks0 = _graphs()
        first = _wall(run, items)
        steady = _wall(run, items)
        graphs1, breaks1 = _graphs()
        warm[name] = {"first_s": first, "steady_s": steady, "warm_up_s": first - steady,
                      "graphs": graphs1 - graphs0, "graph_breaks": breaks1 - breaks0}
        again = _graphs()
        outputs[name] = run(items[0])
        warm[name]["recompiles_after_warm_up"] = _graphs()[0] - again[0]
        print(f"{name}: warm-up {first - steady:.1f} s, {graphs1 - graphs0} graphs, {breaks1 - breaks0} breaks",
              flush=True)
        runners[name] = run
        variants.append(Variant(name, lambda: None, lambda: None))
    for name, diff in output_diffs(outputs).items():
        warm[name]["max_abs_diff_vs_eager"] = diff
    return variants, runners, warm


def output_diffs(outputs: dict[str, Any]) -> dict[str, float | None]:
    """Each variant's video against the eager variant of the same PAB setting (same seed): compiling must not change
    what is computed beyond float reordering. None where there is no output or no eager twin in the run."""
    diffs = {}
    for name, out in outputs.items():
        preset = VARIANTS[name][0]
        twin = outputs.get("eager none" if preset in (None, "none") else f"eager {preset}")
        diffs[name] = None if out is None or twin is None else float((out - twin).abs().max())
    return diffs


def tiny_shapes_runner(args: argparse.Namespace) -> Callable[[], tuple[torch.nn.Module, Callable[[Any], float]]]:
    from pab.runtime.pipelines import load_pipeline

    base = load_pipeline("tiny-shapes")

    def make() -> tuple[torch.nn.Module, Callable[[Any], float]]:
        pipe = copy.deepcopy(base)

        def run(pair: tuple[str, int]) -> torch.Tensor:
            return pipe(pair[0], generator=torch.Generator().manual_seed(pair[1]), num_inference_steps=args.steps,
                        guidance_scale=args.guidance_scale, output_type="pt").frames

        return pipe.transformer, run

    return make


def latte_random_runner(args: argparse.Namespace) -> Callable[[], tuple[torch.nn.Module, Callable[[Any], float]]]:
    from pab_speed import Loop, build

    for key, value in {"hidden": 384, "heads": 6, "latent": 32, "frames": 8, "text_len": 32, "caption_dim": 128,
                       "device": "cpu", "dtype": torch.float32}.items():
        setattr(args, key, getattr(args, key, None) or value)
    base = build(args)

    def make() -> tuple[torch.nn.Module, Callable[[Any], float]]:
        model = copy.deepcopy(base)
        loop = Loop(model, args)
        return model, lambda _: loop.run() and None  # speed only: no output to compare

    return make


Call = tuple[str | None, tuple[Any, ...], dict[str, Any]]
"""One transformer call: its CFG pass (`cache_context` name, or None), positional and keyword arguments."""


def record_calls(make_runner: Callable[[], tuple[torch.nn.Module, Callable[[Any], Any]]], items: list[Any]
                 ) -> list[list[Call]]:
    """The transformer calls of one eager, hook-free generation per item, in order."""
    transformer, run = make_runner()
    forward, context = transformer.forward, transformer.cache_context
    current: list[str | None] = [None]
    per_item: list[list[Call]] = []

    @contextlib.contextmanager
    def recording_context(name: str):
        current[0] = name
        with context(name):
            yield
        current[0] = None

    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        per_item[-1].append((current[0], args, kwargs))
        return forward(*args, **kwargs)

    transformer.forward, transformer.cache_context = recording_forward, recording_context
    for item in items:
        per_item.append([])
        run(item)
    return per_item


def interleave_calls(models: dict[str, torch.nn.Module], generations: list[list[Call]], rounds: int
                     ) -> dict[str, dict[str, list[float]]]:
    """`frontier.interleave` over single transformer calls: the variants take turns call by call. After the last
    call of a generation (untimed) a variant resets its stateful hooks, as the pipeline does when a call ends, so
    PAB starts the next generation afresh."""
    calls = [(call, i == len(gen) - 1) for gen in generations for i, call in enumerate(gen)]
    box: dict[str, torch.nn.Module] = {}
    variants = [Variant(name, lambda model=model: box.__setitem__("model", model), lambda: None) for name, model in
                models.items()]

    def replay(item: tuple[Call, bool]) -> bool:
        (name, args, kwargs), last = item
        model = box["model"]
        with model.cache_context(name) if name is not None else contextlib.nullcontext():
            model(*args, **kwargs)
        return last

    def end_generation(variant: Variant, round_: int, last: bool) -> None:
        registry = getattr(box["model"], "_diffusers_hook", None)
        if last and registry is not None:
            registry.reset_stateful_hooks()

    return interleave(variants, calls, replay, rounds, keep=end_generation)


def _diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def report(times: dict[str, list[float]], warm: dict[str, dict[str, Any]], clock: str) -> str:
    speed = speedups(times, "eager none")
    lines = [f"| variant | speedup vs eager none, {clock} (median [min..max]) | warm-up s (wall) | graphs | "
             "graph breaks | recompiles after warm-up | max abs diff vs eager, same PAB |",
             "|---|---|---|---|---|---|---|"]
    for name in times:
        med, lo, hi = speed[name]
        w = warm[name]
        lines.append(f"| {name} | {med:.2f}x [{lo:.2f}..{hi:.2f}] | {w['warm_up_s']:.1f} | {w['graphs']} | "
                     f"{w['graph_breaks']} | {w['recompiles_after_warm_up']} | {_diff(w.get('max_abs_diff_vs_eager'))} |")
    eager = speed["eager PAB-246"][0]
    lines.append("")
    for suffix in SUFFIXES:
        if f"compiled PAB-246{suffix}" not in times or f"compiled none{suffix}" not in times:
            continue
        within = speedups(times, f"compiled none{suffix}")[f"compiled PAB-246{suffix}"][0]
        med, lo, hi = paired_gain_ratio(times, suffix)
        lines += [f"{clock}: PAB-246 speedup compiled{suffix} / eager: {within:.3f} / {eager:.3f} = {within / eager:.3f}; "
                  f"the same ratio round by round: {med:.3f} [{lo:.3f}..{hi:.3f}] (target >= 0.95); compiled{suffix} "
                  f"PAB-246 vs eager none: {speed[f'compiled PAB-246{suffix}'][0]:.2f}x (target >= 2)"]
    return "\n".join(lines) + "\n"


def paired_gain_ratio(times: dict[str, list[float]], suffix: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of (compiled PAB-246 gain) / (eager PAB-246 gain), both gains taken within the
    same round: load that shifts between rounds cancels out of each round's ratio."""
    ratios = [(cn / cp) / (en / ep) for cn, cp, en, ep in zip(
        times[f"compiled none{suffix}"], times[f"compiled PAB-246{suffix}"], times["eager none"], times["eager PAB-246"])]
    return statistics.median(ratios), min(ratios), max(ratios)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny-shapes", "latte-random"], default="tiny-shapes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=None, help="denoising steps (tiny-shapes 25, latte-random 20)")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, default=2, help="latte-random: spatial (and temporal) blocks")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                   help=f"the variants to run (default: {len(DEFAULT_VARIANTS)} of them), any of: {list(VARIANTS)}")
    p.add_argument("--tag", default="")
    p.add_argument("--per-call", action="store_true",
                   help="tiny-shapes: time the transformer alone, variants interleaved call by call (module docstring)")
    args = p.parse_args(argv)
    args.steps = args.steps or (25 if args.model == "tiny-shapes" else 20)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch._dynamo.config.recompile_limit = 64  # as pab.runtime.pipelines.compile sets it
    t0 = time.time()
    if args.model == "tiny-shapes":
        from pab.runtime.tinyvideo.data import HELD_OUT, caption

        make, items = tiny_shapes_runner(args), [(caption(*c), s) for c in HELD_OUT for s in args.seeds]
    else:
        make, items = latte_random_runner(args), [None]
    if args.per_call and args.model != "tiny-shapes":
        p.error("--per-call replays a pipeline's transformer calls: tiny-shapes only (latte-random times its "
                "transformer alone already)")
    models: dict[str, torch.nn.Module] = {}
    variants, runners, warm = build_variants(make, items, args.variants, models)
    if args.per_call:
        times = interleave_calls(models, record_calls(make, items), args.rounds)
    else:
        box: dict[str, Any] = {}
        for v in variants:
            v.enter = lambda name=v.name: box.__setitem__("run", runners[name])
        times = interleave(variants, items, lambda item: box["run"](item), args.rounds)
    text = report(times["cpu"], warm, "CPU time") + "\n" + report(times["wall"], warm, "wall time")
    stem = f"compile_speed_{args.model}{'_per-call' if args.per_call else ''}{'_' + args.tag if args.tag else ''}"
    command = f"python bench/compile_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip()
    header = (f"Command: `{command}` ({platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
              f"{args.rounds} interleaved rounds, {'the transformer alone, call by call; ' if args.per_call else ''}"
              f"{time.time() - t0:.0f} s wall, inductor on CPU; the 2-core machine "
              f"was shared with other jobs: the ratios are measured within each round).\n\n")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{stem}.md").write_text(header + text)
    (HERE / "results" / f"{stem}.json").write_text(json.dumps({"command": command, "times": times, "warm": warm},
                                                              indent=1) + "\n")
    sys.stdout.write("\n" + header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
