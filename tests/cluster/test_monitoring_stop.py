"""`cluster.monitoring.stop_from_pid_file` signals only the Prometheus it started: a PID file naming another process
(a reused PID, a stale file) leaves that process alone. The real binary's start and `--stop` end to end is
tests/cluster/test_prometheus.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster import monitoring


def _pid_file(data_dir: Path, pid: int | str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "prometheus.pid"
    path.write_text(str(pid))
    return path


def test_a_pid_file_naming_an_unrelated_process_does_not_signal_it(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        pid_file = _pid_file(tmp_path / "prom", sleeper.pid)
        assert monitoring.stop_from_pid_file(tmp_path / "prom") is False
        assert sleeper.poll() is None, "stop_from_pid_file signalled a process that is not its Prometheus"
        assert not pid_file.exists()  # the stale file is gone, so the next --stop does not look again
    finally:
        sleeper.kill()
        sleeper.wait()


def _fake_prometheus(tsdb: Path) -> subprocess.Popen:
    """A process whose command line reads like `start()`'s Prometheus: argv[0] `.../prometheus`, then the TSDB flag
    (a shell under another argv[0]; `; true` keeps it from exec-ing into `sleep`)."""
    return subprocess.Popen(
        ["bash", "-c", 'exec -a /usr/bin/prometheus bash -c "sleep 600; true" sh "$1"', "-",
         f"--storage.tsdb.path={tsdb}"],
        start_new_session=True,  # its own process group, so the test can end the `sleep` under it too
    )


def _wait_until_exec(process: subprocess.Popen) -> None:
    import psutil

    from tests.conftest import wait_for

    wait_for(lambda: psutil.Process(process.pid).cmdline()[0] == "/usr/bin/prometheus", 10, "the fake to exec", 0.02)


def test_a_prometheus_on_another_data_dir_is_not_ours_but_ours_is_stopped(tmp_path: Path) -> None:
    """argv[0] alone is not enough: the TSDB path must be this data dir's."""
    other = _fake_prometheus(tmp_path / "elsewhere" / "tsdb")
    ours = _fake_prometheus(tmp_path / "prom" / "tsdb")
    try:
        _wait_until_exec(other)
        _wait_until_exec(ours)
        _pid_file(tmp_path / "prom", other.pid)
        assert monitoring.stop_from_pid_file(tmp_path / "prom") is False
        assert other.poll() is None
        _pid_file(tmp_path / "prom", ours.pid)
        assert monitoring.stop_from_pid_file(tmp_path / "prom") is True
        assert ours.wait(timeout=30) == -15  # SIGTERM
        assert other.poll() is None
    finally:
        for process in (other, ours):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group this test started, sleep included
            process.wait()


def test_garbage_and_dead_pids_stop_nothing(tmp_path: Path) -> None:
    assert monitoring.stop_from_pid_file(tmp_path / "none") is False
    _pid_file(tmp_path / "prom", "not a pid")
    assert monitoring.stop_from_pid_file(tmp_path / "prom") is False
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    _pid_file(tmp_path / "prom", done.pid)
    assert monitoring.stop_from_pid_file(tmp_path / "prom") is False
