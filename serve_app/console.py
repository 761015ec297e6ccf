"""What `pab serve` prints: a short start banner, then one line per job that ends, and errors as one line.

The job lines come from the job store, the one place every replica writes a job's outcome to, so they are the same
whichever replica ran the job and need no log streaming: a follower thread lists the store about once a second and
prints each job that reached a terminal status (or was deleted) since it last looked.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from pydantic import ValidationError

from .config import AppConfig
from .store import JobStore

POLL_S = 1.0


def banner(config: AppConfig, url: str, logs_dir: str | None) -> list[str]:
    """The start banner: what is served, where, with what, and where everything else is written."""
    watch = config.quality_watch
    keys = len(config.api_keys) + (1 if config.api_key is not None or config.api_key_env else 0)
    replicas = (f"autoscaling {config.autoscaling_config.get('min_replicas', 1)}-"
                f"{config.autoscaling_config.get('max_replicas', '?')} replicas" if config.autoscaling_config
                else f"{config.num_replicas or 1} replica(s)")
    quality = (f"sampling {watch.sample_rate:.0%} of PAB jobs, floor {watch.floor_psnr_db:g} dB, fallback "
               f"{watch.fallback_preset}" if watch.enabled else "watch off (quality_watch.sample_rate=0)")
    lines = [
        f"pab-serve: {config.model_name} on {config.device}, {config.world_size} workers per replica "
        f"(sp {config.sp_degree} x cfg {config.cfg_degree}), {replicas}, PAB {config.pab_preset}",
        f"  url         {url}/v1   playground {url}/playground",
        f"  store       {config.storage.url}   (change: storage.url=DIR or an fsspec URL)",
        f"  api key     {f'on ({keys} key(s))' if keys else 'off: loopback only'}",
        f"  quality     {quality}",
        f"  logs        level {config.log_level} (--log-level debug shows every request)"
        + (f"; all of them in {logs_dir}" if logs_dir else ""),
    ]
    return lines


def job_line(job_id: str, record: Any, state: Any) -> str:
    """One line for a job that ended: id, status, seconds, PAB hit rate (or the error)."""
    if record is None or state is None:
        return f"job {job_id} deleted"
    stats = state.stats
    seconds = stats.timings.total_s if stats is not None and stats.timings.total_s is not None else (
        (state.completed_at or time.time()) - record.submitted_at)
    line = f"job {job_id} {state.status:<9} {seconds:6.2f} s"
    if stats is not None and stats.pab is not None:
        line += f"  PAB {stats.pab.preset}: hit rate {stats.pab.attention.hit_rate:.0%}"
    if state.error:
        line += f"  {state.error.get('code')}: {first_line(state.error.get('message', ''))}"
    return line


class JobEnds:
    r"""
    Which jobs of the store ended since the last look. Jobs that were already finished when it started are not
    reported; jobs that were unfinished then (to be resumed) are.

    Args:
        store: The job store.
    """

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._seen: set[str] = set()
        self._open: set[str] = set()
        self._look(report=False)

    def poll(self) -> list[str]:
        """Lines for the jobs that ended since the last call."""
        return self._look(report=True)

    def _look(self, report: bool) -> list[str]:
        listed = set(self._store.ids())
        for job_id in listed - self._seen:
            self._seen.add(job_id)
            self._open.add(job_id)
        lines = []
        for job_id in sorted(self._open):
            state = self._store.state(job_id)
            if state.terminal:
                record = self._store.record(job_id)
            elif job_id not in listed:  # its folder is gone; one without request.json yet is being created
                record = state = None
            else:
                continue
            self._open.discard(job_id)
            if report:
                lines.append(job_line(job_id, record, state))
        return lines


def follow(store: JobStore, stop: threading.Event, emit: Callable[[str], None]) -> threading.Thread:
    """Start a daemon thread that emits a line per ended job until `stop` is set."""
    ends = JobEnds(store)

    def run() -> None:
        while not stop.wait(POLL_S):
            try:
                for line in ends.poll():
                    emit(line)
            except Exception as exc:  # noqa: BLE001 - the console must outlive a store hiccup
                emit(f"pab-serve: could not read the job store: {first_line(str(exc))}")

    thread = threading.Thread(target=run, name="pab-job-ends", daemon=True)
    thread.start()
    return thread


def first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def error_line(exc: BaseException) -> str:
    """An error as one line that names the field at fault (config, request and PAB errors)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "config"
        return f"{where}: {first.get('msg', 'invalid value')}"
    from pab.config import PABConfigError

    if isinstance(exc, PABConfigError):  # raised with no field: it is always the PAB setting
        return f"pab: {first_line(str(exc)).removeprefix('pab: ')}"
    field = getattr(exc, "field", None)
    if field is not None:
        from pab.runtime.request.api import api_name

        message = first_line(str(exc))
        return f"{api_name(field)}: {message.removeprefix(f'{field}: ')}"
    return first_line(str(exc)) or type(exc).__name__
