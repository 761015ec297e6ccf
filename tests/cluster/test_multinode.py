"""A local cluster of a head and 2 worker raylets (cluster/local_cluster.py): with 2 replicas of 2 workers each,
each replica's placement group sits entirely on one node (STRICT_PACK), the two replicas use different worker
nodes, and both serve jobs.

Run: ../shared/bin/loopback-only .venv/bin/python -m pytest tests/cluster/test_multinode.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

import pytest

from cluster.local_cluster import LocalCluster, NodeSpec, free_port
from tests.cluster.live import scrape, series
from tests.conftest import REPO_ROOT, RAY_TEST_ENV, in_loopback_namespace, wait_for

pytestmark = [pytest.mark.slow]

JOBS = 4
# Head: the ingress (0.1 CPU) but no replica; each worker: exactly one replica (2 workers x 1 CPU).
HEAD = NodeSpec(num_cpus=1)
WORKER = NodeSpec(num_cpus=2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not in_loopback_namespace():
        pytest.skip("starts Ray nodes: run inside ../shared/bin/loopback-only")
    # A short temp dir: Ray's unix socket paths under it must stay below 108 characters.
    temp_dir = tempfile.mkdtemp(prefix="pab-mn-")
    env = {**RAY_TEST_ENV, "PYTHONPATH": str(REPO_ROOT)}
    try:
        local = LocalCluster.start(HEAD, [WORKER, WORKER], temp_dir=temp_dir, env=env)
        try:
            yield local
        finally:
            local.stop()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_each_replica_is_packed_on_its_own_node_and_both_serve(cluster: LocalCluster, tmp_path) -> None:
    env = {**os.environ, **cluster.env, "RAY_ADDRESS": cluster.address}
    run = subprocess.run(
        [sys.executable, "-m", "tests.cluster.multinode_driver", str(tmp_path / "store"), str(free_port()), str(JOBS)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])

    nodes = [n for n in result["nodes"] if n["alive"]]
    assert len(nodes) == 3
    head = [n["node_id"] for n in nodes if "node:__internal_head__" in n["resources"]]
    replicas = result["replicas"]
    assert len(replicas) == 2
    for replica in replicas:
        assert replica["strategy"] == "STRICT_PACK"
        assert len(replica["bundle_nodes"]) == 1, "a replica's bundles span nodes"
        assert replica["worker_nodes"] == replica["bundle_nodes"], "workers sit where their bundles are"
        assert replica["bundle_nodes"] != head
    assert replicas[0]["bundle_nodes"] != replicas[1]["bundle_nodes"], "one replica per worker raylet"
    assert result["statuses"] == ["completed"] * JOBS

    # Both replicas served: each exports its completed-jobs counter on the metrics port of its own node.
    def replicas_with_jobs() -> set[str]:
        served = set()
        for node in cluster.nodes:
            rows = series(scrape(node.metrics_export_port), "ray_pab_jobs_total", status="completed")
            served |= {lab["replica"] for lab, v in rows if v > 0}
        return served

    wait_for(lambda: len(replicas_with_jobs()) == 2, 30, "completed jobs counted on both replicas")
