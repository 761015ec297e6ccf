"""The Ray driver of test_multinode.py, run in its own process (a process joins one Ray cluster, and pytest's may
already be on the session cluster): deploys the app with 2 replicas on the local multi-node cluster at RAY_ADDRESS,
runs jobs over HTTP, and prints what it saw as JSON.

    python -m tests.cluster.multinode_driver STORE_DIR HTTP_PORT JOBS
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor


def main(store: str, port: int, jobs: int) -> dict:
    import ray
    from ray import serve

    from deployments.generator import DEPLOYMENT_NAME
    from serve_app.entrypoints.builder import APP_NAME, build_app
    from serve_app.config import AppConfig
    from tests.conftest import TEST_STEPS, ApiClient

    ray.init(namespace="pab-multinode", log_to_driver=False, logging_level="WARNING")
    # One proxy: every raylet of this cluster shares 127.0.0.1, so per-node proxies would fight over the port.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    config = AppConfig(
        model="tiny-latte",
        sp_degree=2,
        cpus_per_worker=1.0,  # a replica needs 2 CPUs: exactly one fits on each 2-CPU worker raylet
        num_replicas=2,
        max_ongoing_requests=1,  # one job per replica at a time, so the jobs spread over both replicas
        defaults={"num_inference_steps": TEST_STEPS},
        storage={"url": store},
        poll_after_ms=100,
    )
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
    replicas: dict[str, dict] = {}
    for _ in range(60):  # requests go to a random replica; 60 tries miss one with probability ~1e-18
        info = handle.describe.remote().result()
        replicas[info["placement_group_id"]] = info
        if len(replicas) == 2:
            break
    table = ray.util.placement_group_table()

    api = ApiClient(f"http://127.0.0.1:{port}", api_key=None)
    with ThreadPoolExecutor(jobs) as pool:
        created = list(pool.map(lambda i: api.create(prompt=f"fox {i}", seed=i), range(jobs)))
    videos = [api.wait(v["id"], timeout=300) for v in created]
    return {
        "nodes": [
            {"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()
        ],
        "replicas": [
            {
                "placement_group_id": pg,
                "strategy": table[pg]["strategy"],
                "bundle_nodes": sorted(set(table[pg]["bundles_to_node_id"].values())),
                "worker_nodes": sorted({w["node_id"] for w in info["workers"]}),
            }
            for pg, info in replicas.items()
        ],
        "statuses": [v["status"] for v in videos],
    }


if __name__ == "__main__":
    result = main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print("RESULT " + json.dumps(result), flush=True)
