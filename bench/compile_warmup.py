"""What `compile` costs a serving replica: the cold warm-up of `VideoGenerator(compile=...)` against the steady
generation time it buys, per compile setting, each in a fresh process with inductor's caches off (what a new replica
on a new machine pays; with `/tmp/torchinductor_$USER` kept, a restart reuses the compiled kernels).

Variants run one after the other, `--rounds` times each, rotated round by round; the steady time is the median of
three generations after the warm-up, in the same process.

    python bench/compile_warmup.py                 # tiny-shapes, PAB-246, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
VARIANTS: dict[str, dict | None] = {
    "eager": None,
    "compile=true": {},
    "compile freezing+cpp_wrapper": {"options": {"freezing": True, "cpp_wrapper": True}},
}
COLD = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0", "OMP_NUM_THREADS": "1"}


def measure(model: str, preset: str, compile_setting: dict | None) -> dict:
    """In this process: build the generator (compiling and warming up), then time three steady generations."""
    import torch

    from pab.runtime.pipelines import GenerationParams, VideoGenerator, load_pipeline

    torch.set_num_threads(1)
    start = time.perf_counter()
    generator = VideoGenerator(load_pipeline(model), pab=preset, compile=compile_setting if compile_setting is not None
                               else False)
    build_s = time.perf_counter() - start
    params = GenerationParams(prompt="a red square moving left", seed=1)
    generator.generate(params)  # eager: its first call; compiled: already warm
    steady = []
    for _ in range(3):
        t = time.perf_counter()
        generator.generate(params)
        steady.append(time.perf_counter() - t)
    report = generator.compile_report
    return {"build_s": build_s, "warm_up_s": report.warm_up_s if report else 0.0,
            "graphs": report.graphs if report else 0, "steady_s": statistics.median(steady)}


def run_child(model: str, preset: str, name: str) -> dict:
    env = {**os.environ, **COLD, "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run([sys.executable, __file__, "--child", name, "--model", model, "--preset", preset],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(results: dict[str, list[dict]]) -> str:
    eager = statistics.median(r["steady_s"] for r in results["eager"])
    lines = ["| variant | cold warm-up s (median [min..max]) | graphs | steady generation s | speedup vs eager | "
             "generations to pay the warm-up back |", "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        warm = [r["warm_up_s"] for r in runs]
        steady = statistics.median(r["steady_s"] for r in runs)
        saved = eager - steady
        payback = f"{statistics.median(warm) / saved:.0f}" if name != "eager" and saved > 0 else "-"
        lines.append(f"| {name} | {statistics.median(warm):.1f} [{min(warm):.1f}..{max(warm):.1f}] | "
                     f"{runs[0]['graphs']} | {steady:.3f} | {eager / steady:.2f}x | {payback} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-shapes")
    p.add_argument("--preset", default="PAB-246")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model, args.preset, VARIANTS[args.child])))
        return 0
    t0 = time.time()
    names = list(VARIANTS)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            results[name].append(run_child(args.model, args.preset, name))
            print(f"round {r + 1}: {name} {results[name][-1]}", flush=True)
    command = f"python bench/compile_warmup.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip()
    header = (f"Command: `{command}` ({platform.machine()}, {args.model}, {args.preset}, 1 torch thread, inductor "
              f"caches off, {args.rounds} rotated rounds, {time.time() - t0:.0f} s wall; the 2-core machine was "
              f"shared). Steady times are 3 generations per process, not interleaved: indicative only; "
              f"bench/compile_speed.py measures the speedups side by side.\n\n")
    text = header + report(results)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"compile_warmup_{args.model}.md").write_text(text)
    sys.stdout.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
