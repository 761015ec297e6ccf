"""Engine batching through HTTP on one replica: 8 same-shape jobs submitted together vs the same 8 one at a time,
with PAB off and with PAB-246, and the time from DELETE of a running job to the next job starting.

One app (the CPU config: tiny-shapes, 2 workers, sequence parallel over both) serves every variant in one run; the
variants are interleaved round by round (their order rotates), and each figure is the median over rounds with the
spread. Throughput = jobs / wall time from the first POST to the last job completed. Targets (issue): batched >= 3.5x
one at a time (PAB off); batched + PAB-246 >= 5x one at a time without PAB; DELETE -> next job started <= one step
time + 0.5 s.

Run (opens ports, so inside the loopback namespace):

    scripts/loopback-only .venv/bin/python bench/engine_throughput.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "BENCHMARKS_engine.md"
PORT = 8000
PROMPTS = [f"a {c} {s} moving {d}" for c, s, d in [
    ("red", "square", "left"), ("green", "disc", "up"), ("blue", "triangle", "right"), ("yellow", "square", "down"),
    ("red", "disc", "right"), ("green", "triangle", "left"), ("blue", "square", "up"), ("yellow", "disc", "down")]]


def _wait(client, video_id: str) -> dict:
    while True:
        video = client.get(f"/v1/videos/{video_id}").raise_for_status().json()
        if video["status"] not in ("queued", "in_progress"):
            if video["status"] != "completed":
                raise RuntimeError(f"job {video_id} {video['status']}: {video['error']}")
            return video
        time.sleep(0.02)


def _body(i: int, pab: str, steps: int) -> dict:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": steps, "pab": pab}


def one_at_a_time(client, pab: str, jobs: int, steps: int) -> float:
    start = time.perf_counter()
    for i in range(jobs):
        _wait(client, client.post("/v1/videos", json=_body(i, pab, steps)).raise_for_status().json()["id"])
    return time.perf_counter() - start


def together(client, pab: str, jobs: int, steps: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        ids = list(pool.map(lambda i: client.post("/v1/videos", json=_body(i, pab, steps)).raise_for_status()
                            .json()["id"], range(jobs)))
    videos = [_wait(client, i) for i in ids]
    return time.perf_counter() - start, videos


def delete_to_next_start(client, store, steps: int) -> float:
    """Seconds from DELETE of a running job to the start of the job queued behind it (from the store's state)."""
    long = client.post("/v1/videos", json={"prompt": PROMPTS[0], "steps": 200, "seed": 1}).raise_for_status().json()
    while client.get(f"/v1/videos/{long['id']}").json()["progress"] < 5:
        time.sleep(0.01)
    following = client.post("/v1/videos", json={"prompt": PROMPTS[1], "size": "32x32", "steps": 2, "seed": 2})
    following_id = following.raise_for_status().json()["id"]
    deleted_at = time.time()
    client.delete(f"/v1/videos/{long['id']}").raise_for_status()
    while (started := store.state(following_id).started_at) is None:
        time.sleep(0.005)
    _wait(client, following_id)
    return started - deleted_at


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps per job (tiny-shapes' default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import httpx
    import ray
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.entrypoints.builder import APP_NAME, build_app
    from serve_app.store import JobStore

    store_dir = tempfile.mkdtemp(prefix="pab-bench-engine-")
    config = AppConfig(model="tiny-shapes", sp_degree=2, storage={"url": store_dir},
                       engine={"max_batch_size": args.jobs}, cpu_generation_niceness=0)
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    results: dict[str, list[float]] = {"none/alone": [], "none/batched": [], "PAB-246/alone": [], "PAB-246/batched": []}
    batch_sizes: list[int] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        store = JobStore(store_dir)
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=600) as client:
            together(client, "none", 2, 2)  # warm-up
            variants = list(results)
            for r in range(args.rounds):
                for name in variants[r % 4:] + variants[: r % 4]:  # rotate the order round by round
                    pab, mode = name.split("/")
                    if mode == "alone":
                        results[name].append(one_at_a_time(client, pab, args.jobs, args.steps))
                    else:
                        seconds, videos = together(client, pab, args.jobs, args.steps)
                        results[name].append(seconds)
                        batch_sizes += [store.state(v["id"]).stats.batch_size for v in videos]
            step_s = statistics.median(store.state(v["id"]).stats.step_s[-1] for v in videos)
            deletes = [delete_to_next_start(client, store, args.steps) for _ in range(args.rounds)]
    finally:
        serve.shutdown()
        ray.shutdown()

    base = statistics.median(results["none/alone"])
    ratio = {name: base / statistics.median(v) for name, v in results.items()}
    batched = statistics.median(results["none/alone"]) / statistics.median(results["none/batched"])
    pab_batched = ratio["PAB-246/batched"]
    command = f"scripts/loopback-only .venv/bin/python bench/engine_throughput.py {' '.join(argv or sys.argv[1:])}".strip()
    lines = [
        "# Engine batching through HTTP on one replica",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, ray {ray.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; shared with other work (medians over rounds, order "
        "rotated each round).",
        "",
        f"App: tiny-shapes on CPU, 2 workers (sequence parallel), `engine.max_batch_size={args.jobs}`, one replica; "
        f"{args.jobs} jobs of {args.steps} steps, 16x16, 4 frames, different prompts and seeds; {args.rounds} rounds.",
        "",
        "| variant | wall time for all jobs (s): median (min, max) | throughput vs one at a time, PAB off |",
        "|---|---|---|",
        *(f"| {name} | {_spread(v)} | {ratio[name]:.2f}x |" for name, v in results.items()),
        "",
        f"Batch sizes seen by the batched jobs: {sorted(set(batch_sizes))} (max {max(batch_sizes)}).",
        "",
        f"**Batched / one at a time (PAB off) = {batched:.2f}x** (target >= 3.5x: {'met' if batched >= 3.5 else 'NOT met'}).",
        f"**Batched + PAB-246 / one at a time without PAB = {pab_batched:.2f}x** "
        f"(target >= 5x: {'met' if pab_batched >= 5 else 'NOT met'}).",
        "",
        f"DELETE of a running job -> the next job started: {', '.join(f'{d:.3f}' for d in deletes)} s, median "
        f"{statistics.median(deletes):.3f} s; one denoising step of a batch takes {step_s:.3f} s, so the target "
        f"(<= step + 0.5 s = {step_s + 0.5:.3f} s) is {'met' if statistics.median(deletes) <= step_s + 0.5 else 'NOT met'}.",
        "",
    ]
    report = "\n".join(lines)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
