"""A multi-node Ray cluster on one machine: a head and worker raylets, each with its own resources.

For tests and demos of what only shows across nodes (a replica's placement group packed on one node, several nodes
exporting metrics). Each node is a `ray start --block` process in its own process group, with its own ports, so the
cluster is stopped by the PIDs it started and nothing else on the machine is touched (`ray stop` would end every Ray
process of the user). Run it in `../shared/bin/loopback-only` to keep it on 127.0.0.1.

    python -m cluster.local_cluster --workers 2 --worker-cpus 1      # Ctrl-C stops the whole cluster
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

RAY_START_TIMEOUT_S = 180.0  # `ray start` imports Ray and starts several daemons: slow on a busy 2-core machine


class LocalClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeSpec:
    """One raylet's resources. `resources` are custom resources (e.g. {"node_a": 1}) that pin work to this node."""

    num_cpus: int = 1
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 256 * 1024**2

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus} and {self.num_gpus}")
        if self.object_store_memory < 78 * 1024**2:
            raise ValueError(f"object_store_memory must be >= 78 MiB (Ray's minimum), got {self.object_store_memory}")


@dataclass
class Node:
    spec: NodeSpec
    process: subprocess.Popen
    metrics_export_port: int
    log_path: Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (all held open until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


WORKER_PORTS_PER_NODE = 1000
"""Each raylet gets its own range of worker ports from 20000 up: above the range a plain `ray.init()` cluster uses
(10002-19999, so one can run beside) and below Linux's ephemeral ports, so raylets sharing 127.0.0.1 never hand
the same port to two workers."""


def find_ray_cli() -> str:
    """The `ray` CLI of this Python environment (a venv's bin/ need not be on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise LocalClusterError("the `ray` command was not found: install ray[serve] into this Python environment")
    return found


class LocalCluster:
    """Start with `LocalCluster.start(...)`; use `address` with `ray.init(address=...)`; end with `stop()`.

    Every node runs with `RAY_AUTH_MODE=token`: a client connects with the same setting (and the same token file).
    """

    def __init__(self, temp_dir: Path, head_port: int, env: dict[str, str], ray_bin: str) -> None:
        self.ray_bin = ray_bin
        self.temp_dir = temp_dir
        self.head_port = head_port
        self.env = env
        self.nodes: list[Node] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.head_port}"

    @classmethod
    def start(
        cls,
        head: NodeSpec,
        workers: Sequence[NodeSpec] = (),
        temp_dir: str | os.PathLike = "/tmp/ray",
        include_dashboard: bool = False,
        dashboard_port: int | None = None,
        env: dict[str, str] | None = None,
        ray_bin: str | None = None,
    ) -> LocalCluster:
        """Start the head, then each worker raylet, and wait until all of them are alive in the cluster."""
        # Token auth on every node (Ray turns it on at a head that finds a token, but not at a joining worker).
        run_env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            # A raylet waits this long for its dashboard agent (default 10 s, too short when several nodes share
            # a few busy cores).
            "RAY_agent_register_timeout_ms": "120000",
            **(env or {}),
        }
        cluster = cls(Path(temp_dir).resolve(), free_port(), run_env, ray_bin or find_ray_cli())
        if run_env["RAY_AUTH_MODE"] == "token":
            # Creates ~/.ray/auth_token (or $RAY_AUTH_TOKEN_PATH) only if none exists; clients read the same file.
            subprocess.run([cluster.ray_bin, "get-auth-token", "--generate"], env=run_env, check=True,
                           capture_output=True, timeout=RAY_START_TIMEOUT_S)
        cluster.temp_dir.mkdir(parents=True, exist_ok=True)
        try:
            head_args = [
                "--head",
                f"--port={cluster.head_port}",
                f"--temp-dir={cluster.temp_dir}",
                f"--include-dashboard={'true' if include_dashboard else 'false'}",
                "--dashboard-host=127.0.0.1",
            ]
            if include_dashboard:
                head_args.append(f"--dashboard-port={dashboard_port or free_port()}")
            cluster.wait_started(cluster._start_node(head, head_args, "head"))
            # One after the other: raylets starting side by side on a busy machine miss Ray's start-up deadlines.
            for spec in workers:
                cluster.add_worker(spec)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def add_worker(self, spec: NodeSpec, attempts: int = 3) -> Node:
        """Start one more worker raylet and wait until it joined.

        Ray gives a new raylet a fixed 30 s to register with the GCS; on a machine busy enough to miss that, `ray
        start` gives up, so a failed start is retried (its processes ended first).
        """
        for attempt in range(1, attempts + 1):
            node = self._start_node(spec, [f"--address={self.address}"], f"worker{len(self.nodes)}")
            try:
                self.wait_started(node)
                return node
            except LocalClusterError:
                self._end(node)
                self.nodes.remove(node)
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_node(self, spec: NodeSpec, role_args: list[str], name: str) -> Node:
        metrics, node_manager, object_manager, agent, agent_grpc, runtime_env = free_ports(6)
        first_worker_port = 20000 + len(self.nodes) * WORKER_PORTS_PER_NODE
        args = [
            self.ray_bin,
            "start",
            "--block",
            *role_args,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={spec.num_cpus}",
            f"--num-gpus={spec.num_gpus}",
            f"--object-store-memory={spec.object_store_memory}",
            f"--metrics-export-port={metrics}",
            # Raylets on one machine share its ports: give each its own (several defaults are fixed numbers, and
            # two raylets starting at once can otherwise pick the same random one).
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={first_worker_port}",
            f"--max-worker-port={first_worker_port + WORKER_PORTS_PER_NODE - 1}",
            "--disable-usage-stats",
        ]
        if spec.resources:
            args.append(f"--resources={json.dumps(spec.resources)}")
        log_path = self.temp_dir / f"local_cluster_{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        node = Node(spec, process, metrics, log_path)
        self.nodes.append(node)
        return node

    def wait_started(self, node: Node, timeout_s: float = RAY_START_TIMEOUT_S) -> None:
        """Wait until `ray start` reports the node's runtime started (it has registered with the head's GCS)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise LocalClusterError(
                    f"`ray start` exited with code {node.process.returncode}; {node.log_path} ends:\n{_tail(node)}"
                )
            if _STARTED_MARK in node.log_path.read_bytes():
                return
            time.sleep(0.25)
        raise LocalClusterError(
            f"Ray node did not start within {timeout_s:.0f} s; {node.log_path} ends:\n{_tail(node)}"
        )

    @staticmethod
    def _end(node: Node) -> None:
        """SIGKILL the process group `ray start` led (raylet, agents, workers): only what this node started."""
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        node.process.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM every node this cluster started (workers first), then SIGKILL their process groups."""
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in reversed(self.nodes):
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Raylets, GCS and workers run in the process group `ray start` led; end any it left behind.
            self._end(node)
        self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_STARTED_MARK = b"Ray runtime started"


def _tail(node: Node, lines: int = 15) -> str:
    return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])


def _parse_resources(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'--worker-resources must be JSON like {{"gpu_node": 1}}: {e}') from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('--worker-resources must be a JSON object like {"gpu_node": 1}')
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a head and worker raylets on this machine (Ctrl-C stops).")
    parser.add_argument("--workers", type=int, default=2, help="worker raylets (default 2)")
    parser.add_argument("--head-cpus", type=int, default=1, help="CPUs of the head (0 keeps replicas off it)")
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--worker-gpus", type=int, default=0)
    parser.add_argument(
        "--worker-resources", type=_parse_resources, default={}, help="custom resources of each worker, JSON"
    )
    parser.add_argument("--temp-dir", default="/tmp/ray")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (needed by Prometheus SD)")
    args = parser.parse_args(argv)
    worker = NodeSpec(args.worker_cpus, args.worker_gpus, args.worker_resources)
    try:
        cluster = LocalCluster.start(
            NodeSpec(args.head_cpus), [worker] * args.workers, args.temp_dir, include_dashboard=args.dashboard
        )
    except LocalClusterError as e:
        parser.exit(1, f"error: {e}\n")
    print(f"Ray cluster of {1 + args.workers} nodes at {cluster.address} (temp dir {cluster.temp_dir}).")
    print(f"Connect with RAY_AUTH_MODE=token RAY_ADDRESS={cluster.address}.")
    print(f"Metrics export ports (head first): {[n.metrics_export_port for n in cluster.nodes]}")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
