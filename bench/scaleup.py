"""Scale-up latency: time from a burst of queued jobs to the second generator replica serving its first job (CPU).

Starts its own Ray cluster and the app (tiny Latte, 2 workers per replica, autoscaling min 1 / max 2), warms the
first replica with one job, then submits a burst and keeps at least two jobs waiting. A replica runs one job at a
time, so the moment two jobs are `in_progress` together is the moment the second replica serves. Reports when
Serve decided to scale (a second replica exists), when it was RUNNING, and when it served.

    ../shared/bin/loopback-only .venv/bin/python bench/scaleup.py [--upscale-delay-s 1 --metrics-interval-s 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.autoscaling import VIDEO_AUTOSCALING_DEFAULTS  # noqa: E402

ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upscale-delay-s", type=float, default=VIDEO_AUTOSCALING_DEFAULTS["upscale_delay_s"])
    parser.add_argument(
        "--metrics-interval-s", type=float, default=10.0, help="how often handles and replicas report load (Ray: 10)"
    )
    parser.add_argument("--burst", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per job (job length)")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--cpu-generation-niceness", type=int, default=None,
                        help="AppConfig.cpu_generation_niceness (default: the app's default)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    os.environ.update(ENV)

    import httpx
    import ray
    from ray import serve

    from cluster.local_cluster import free_port
    from serve_app.entrypoints.builder import APP_NAME, build_app
    from serve_app.config import AppConfig

    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "upscale_delay_s": args.upscale_delay_s,
        "metrics_interval_s": args.metrics_interval_s,
        # The window must hold several load reports (Ray warns when it is not longer than the report interval).
        "look_back_period_s": VIDEO_AUTOSCALING_DEFAULTS["look_back_period_s"]
        if args.metrics_interval_s >= 10
        else max(2.0, 4 * args.metrics_interval_s),
    }
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = AppConfig(
            model="tiny-latte",
            sp_degree=2,
            autoscaling_config=autoscaling,
            queue={"max_jobs": 200},
            storage={"url": tempfile.mkdtemp(prefix="pab-scaleup-")},
            **({} if args.cpu_generation_niceness is None else {"cpu_generation_niceness": args.cpu_generation_niceness}),
        )
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        def create(i: int) -> str:
            r = http.post("/v1/videos", json={"prompt": f"burst {i}", "seed": i, "steps": args.steps})
            r.raise_for_status()
            return r.json()["id"]

        def wait_done(job_id: str) -> None:
            while http.get(f"/v1/videos/{job_id}").json()["status"] not in ("completed", "failed"):
                time.sleep(0.2)

        while http.get("/v1/models").status_code != 200:
            time.sleep(0.5)
        wait_done(create(0))  # the first replica is warm; its job duration is the reference below
        one_job = http.get("/v1/videos", params={"limit": 1}).json()["data"][0]["timings"]["total_s"]

        t0 = time.monotonic()
        ids = [create(i) for i in range(1, args.burst + 1)]
        marks: dict[str, float] = {}
        while time.monotonic() - t0 < args.timeout_s and "second_replica_serving_s" not in marks:
            states = serve.status().applications[APP_NAME].deployments["VideoGenerator"].replica_states
            if sum(states.values()) >= 2:
                marks.setdefault("second_replica_created_s", time.monotonic() - t0)
            if states.get("RUNNING", 0) >= 2:
                marks.setdefault("second_replica_running_s", time.monotonic() - t0)
            jobs = http.get("/v1/videos", params={"limit": 100}).json()["data"]
            statuses = [j["status"] for j in jobs if j["id"] in ids]
            if statuses.count("in_progress") >= 2:
                marks["second_replica_serving_s"] = time.monotonic() - t0
            elif statuses.count("queued") < 2 and len(ids) < 100:
                ids.append(create(len(ids) + 1))  # keep work waiting for the new replica
            time.sleep(0.25)
        result = {
            "autoscaling_config": autoscaling,
            "cpu_generation_niceness": config.cpu_generation_niceness,
            "second_replica_startup": _second_replica_startup(APP_NAME),
            "job_seconds": round(one_job, 2),
            **{k: round(v, 1) for k, v in marks.items()},
            "target_s": 20,
        }
        print(json.dumps(result))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if "second_replica_serving_s" in marks else 1
    finally:
        serve.shutdown()
        ray.shutdown()


def _second_replica_startup(app: str) -> dict | None:
    """The start phases the newest generator replica logged (`WorkerGroup.startup`), read from Serve's replica logs."""
    import ast
    import glob

    from ray._private.worker import global_worker

    logs = glob.glob(f"{global_worker.node.get_session_dir_path()}/logs/serve/replica_{app}_VideoGenerator_*.log")
    lines = [line for path in logs for line in open(path, errors="replace") if "pab generator replica" in line]
    return ast.literal_eval(sorted(lines)[-1].split("ready: ", 1)[1].strip()) if lines else None


if __name__ == "__main__":
    raise SystemExit(main())
