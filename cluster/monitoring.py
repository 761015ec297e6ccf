"""Run Prometheus beside a local Ray cluster, scraping it through Ray's service-discovery file.

`cluster/prometheus.yml` is the template; this module points it at the SD file of a given Ray temp dir, sets the
scrape interval, and starts Debian's `prometheus` binary on 127.0.0.1 with its own data dir and a PID file, so it
can be stopped by PID. `cluster/start-monitoring.sh` is the one-command wrapper.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).parent / "prometheus.yml"
RULES_PATH = Path(__file__).parent / "pab-alerts.yml"
SD_FILE_NAME = "prom_metrics_service_discovery.json"  # ray._private.ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE
DEFAULT_DATA_DIR = Path(".pab") / "prometheus"


class MonitoringError(RuntimeError):
    pass


def render_config(ray_temp_dir: str | os.PathLike = "/tmp/ray", scrape_interval: str = "10s") -> dict[str, Any]:
    """The template with the Ray SD file under `ray_temp_dir`, the given scrape/evaluation interval, and the alert
    rules by absolute path (the rendered config is written elsewhere)."""
    config = yaml.safe_load(TEMPLATE_PATH.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(RULES_PATH.resolve())]
    sd_file = str(Path(ray_temp_dir).resolve() / SD_FILE_NAME)
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [sd_file]
    return config


def find_binary(binary: str | None = None) -> str | None:
    """The Prometheus binary: `binary`, $PROMETHEUS_BIN, or `prometheus` on PATH (Debian's package); None if absent."""
    name = binary or os.environ.get("PROMETHEUS_BIN") or "prometheus"
    return shutil.which(name)


@dataclass
class PrometheusServer:
    """A Prometheus process started by `start()`; `stop()` ends exactly that process."""

    process: subprocess.Popen
    url: str
    data_dir: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        (self.data_dir / "prometheus.pid").unlink(missing_ok=True)

    def query(self, expr: str) -> list[dict[str, Any]]:
        return query(self.url, expr)


def start(
    port: int = 9090,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    ray_temp_dir: str | os.PathLike = "/tmp/ray",
    scrape_interval: str = "10s",
    binary: str | None = None,
    ready_timeout_s: float = 30.0,
) -> PrometheusServer:
    """Write the rendered config into `data_dir`, start Prometheus on 127.0.0.1:`port`, wait until it is ready."""
    exe = find_binary(binary)
    if exe is None:
        raise MonitoringError(
            f"Prometheus binary {binary or os.environ.get('PROMETHEUS_BIN') or 'prometheus'!r} not found: install it "
            "(Debian/Ubuntu: apt-get install -y prometheus) or set PROMETHEUS_BIN to its path."
        )
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    config_path = data / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(render_config(ray_temp_dir, scrape_interval), sort_keys=False))
    log = open(data / "prometheus.log", "ab")
    process = subprocess.Popen(
        [
            exe,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1d",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in the shell that started it does not take it down mid-write
    )
    log.close()
    (data / "prometheus.pid").write_text(str(process.pid))
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", data)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MonitoringError(
                f"Prometheus exited with code {process.returncode} at start; see {data / 'prometheus.log'} "
                f"(is port {port} free? pass --port to pick another)."
            )
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.25)
    server.stop()
    raise MonitoringError(f"Prometheus was not ready within {ready_timeout_s:.0f} s; see {data / 'prometheus.log'}.")


def stop_from_pid_file(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> bool:
    """Stop the Prometheus whose PID `start()` wrote into `data_dir`; False if there was none.

    The PID is signalled only while it is still that Prometheus (its command line runs a `prometheus` binary on
    this data dir's TSDB): a PID file outlives its process, and the PID may since belong to anything else. A PID
    file that names another process is stale and is removed.
    """
    pid_file = Path(data_dir) / "prometheus.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid = None
    pid_file.unlink()
    if pid is None or not _is_our_prometheus(pid, Path(data_dir)):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def _is_our_prometheus(pid: int, data_dir: Path) -> bool:
    """Whether `pid` runs a `prometheus` binary with the TSDB path `start()` gives it for `data_dir`."""
    import psutil

    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return False
    tsdb = f"--storage.tsdb.path={data_dir.resolve() / 'tsdb'}"
    return bool(argv) and Path(argv[0]).name.startswith("prometheus") and tsdb in argv[1:]


def query(base_url: str, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run an instant PromQL query; returns Prometheus' `data.result` list."""
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise MonitoringError(f"Prometheus query failed: {body.get('error')} ({expr})")
    return body["data"]["result"]


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """The samples a Prometheus endpoint (e.g. a Ray node's `http://127.0.0.1:8080/metrics`) exposes, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def series(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of `name` whose labels include `labels`."""
    return [(lab, v) for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start Prometheus beside the local Ray cluster.")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--ray-temp-dir", default="/tmp/ray", help="the Ray cluster's --temp-dir")
    parser.add_argument("--scrape-interval", default="10s")
    parser.add_argument("--stop", action="store_true", help="stop the Prometheus started with this --data-dir")
    args = parser.parse_args(argv)
    if args.stop:
        stopped = stop_from_pid_file(args.data_dir)
        print("stopped Prometheus" if stopped else f"no running Prometheus recorded in {args.data_dir}")
        return 0
    try:
        server = start(args.port, args.data_dir, args.ray_temp_dir, args.scrape_interval)
    except MonitoringError as e:
        parser.exit(1, f"error: {e}\n")
    print(f"Prometheus ready at {server.url} (pid {server.process.pid}, data in {server.data_dir})")
    print(
        "Grafana: add this Prometheus as a datasource and import cluster/grafana/pab-serve-dashboard.json; "
        "Ray's own dashboards are in <ray temp dir>/session_latest/metrics/grafana/dashboards/."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
