"""What the quality watch costs a user job: the queue wait of a job that arrives while the watch re-runs a sampled
job with PAB off, beside the same job on an app with the watch off.

Two apps on one Ray, each the trained tiny-shapes on 2 workers per replica: `watch-on` (quality_watch.sample_rate=1)
and `watch-off`. One round on either app: a PAB job of `--primer-steps` steps; once it completed (on `watch-on` the
watch is re-running it then), a user job of `--steps` steps without PAB. Rounds alternate the apps ABBA, and each
starts when the other app's watch is idle, so neither steals the cores from the other's round. The figure is the user
job's server-side queue wait (`timings.queue_wait_s`: from its submission to the start of its batch), per app, and
the difference of the medians beside one denoising step of the preempted re-run (the bound: the watch stops at a
step end). The replica counts the preemptions.

Run (opens ports, so inside the loopback namespace):

    scripts/loopback-only .venv/bin/python bench/quality_watch.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "BENCHMARKS_quality_watch.md"
PORT = 8000
APPS = ("watch-on", "watch-off")


def _job(client, body: dict) -> dict:
    video = client.post("/v1/videos", json=body).raise_for_status().json()
    while video["status"] in ("queued", "in_progress"):
        response = client.get(f"/v1/videos/{video['id']}").raise_for_status()
        video = response.json()
        if video["status"] in ("queued", "in_progress"):
            time.sleep(int(response.headers.get("openai-poll-after-ms", 100)) / 1000)
    if video["status"] != "completed":
        raise RuntimeError(f"job {video['id']} {video['status']}: {video['error']}")
    return video


def _watch(app: str) -> dict | None:
    from ray import serve

    return serve.get_deployment_handle("VideoGenerator", app_name=app).describe.remote().result()["quality_watch"]


def _until_idle(app: str) -> None:
    while (state := _watch(app)) is not None and (state["pending"] or state["measuring"]):
        time.sleep(0.05)


def _round(client, app: str, i: int, args: argparse.Namespace) -> tuple[float, bool, float]:
    """One primer + user job: the user job's queue wait, whether the watch was re-running when it arrived, and the
    primer's seconds per denoising step."""
    primer = _job(client, {"prompt": "a red square moving left", "steps": args.primer_steps, "seed": i,
                           "pab": "PAB-246"})
    busy = False
    if app == "watch-on":
        deadline = time.monotonic() + 30
        while not (busy := _watch(app)["measuring"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    user = _job(client, {"prompt": "a blue disc moving up", "steps": args.steps, "seed": i, "pab": "none"})
    return user["timings"]["queue_wait_s"], busy, primer["timings"]["denoise_s"] / args.primer_steps


def _rows(waits: dict[str, list[float]]) -> list[str]:
    rows = []
    for app in APPS:
        w = waits[app]
        rows.append(f"| {app} | {', '.join(f'{1000 * x:.0f}' for x in w)} | {1000 * statistics.median(w):.0f} | "
                    f"{1000 * min(w):.0f}-{1000 * max(w):.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primer-steps", type=int, default=100, help="steps of the job the watch re-runs")
    parser.add_argument("--steps", type=int, default=8, help="steps of the user job")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per app")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import httpx
    import ray
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.entrypoints.builder import build_app

    ray.init(address="local", num_cpus=6, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    waits: dict[str, list[float]] = {app: [] for app in APPS}
    busy_rounds, step_s, preempted, measured = 0, [], 0, 0
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        for app in APPS:
            watch = {"sample_rate": 1.0 if app == "watch-on" else 0.0}
            config = AppConfig(model="tiny-shapes", storage={"url": tempfile.mkdtemp(prefix=f"pab-bench-{app}-")},
                               quality_watch=watch, poll_after_ms=100, min_poll_after_ms=10)
            serve.run(build_app(config), name=app, route_prefix=f"/{app}")
        clients = {app: httpx.Client(base_url=f"http://127.0.0.1:{PORT}/{app}", timeout=600) for app in APPS}
        for app in APPS:  # warm-up: first handle call, first ffmpeg, the watch's first re-run
            _job(clients[app], {"prompt": "a red square moving left", "steps": 2, "seed": 0, "pab": "PAB-246"})
            _until_idle(app)
        order = [APPS[(i // 2 + i) % 2] for i in range(2 * args.rounds)]  # ABBA ABBA ...
        for i, app in enumerate(order):
            for other in APPS:
                _until_idle(other)
            wait, busy, step = _round(clients[app], app, i + 1, args)
            waits[app].append(wait)
            busy_rounds += busy
            step_s.append(step)
        _until_idle("watch-on")
        on = _watch("watch-on")
        preempted, measured = on["preempted"], on["measured"]
    finally:
        serve.shutdown()
        ray.shutdown()

    extra_ms = 1000 * (statistics.median(waits["watch-on"]) - statistics.median(waits["watch-off"]))
    command = f"scripts/loopback-only .venv/bin/python bench/quality_watch.py {' '.join(argv or sys.argv[1:])}".strip()
    report = "\n".join([
        "# The quality watch: what a user job waits when it arrives during a re-run",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work while this ran), ray "
        f"{ray.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Two apps on one Ray (tiny-shapes, 2 workers per replica): `watch-on` (sample_rate 1) and `watch-off`. A round: "
        f"a PAB-246 job of {args.primer_steps} steps, then, while `watch-on`'s watch re-runs it (seen re-running in "
        f"{busy_rounds} of {args.rounds} rounds), a user job of {args.steps} steps; {args.rounds} rounds per app, "
        "ABBA. Queue wait of the user job, server-side (submission to the start of its batch), ms:",
        "",
        "| app | rounds | median | range |",
        "|---|---|---|---|",
        *_rows(waits),
        "",
        f"**Added queue wait (median on - median off): {extra_ms:.0f} ms**, beside one denoising step of "
        f"{1000 * statistics.median(step_s):.0f} ms (median over the primers; the ranks stop at a step end, plus the "
        f"stop's round trip to the workers). Re-runs preempted: {preempted}; samples measured: {measured} (every "
        "preempted re-run ran again when the app was idle).",
        "",
    ])
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
