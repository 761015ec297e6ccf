"""The periodic retention sweep (serve_app/retention.py) without Ray: what it removes, and that its loop survives a
failing sweep."""

from __future__ import annotations

import asyncio
import time

import pytest

from pab.runtime.request.request import StoredRequest
from serve_app.config import AppConfig, StorageConfig
from serve_app.retention import RetentionSweeper
from serve_app.store import JobRecord, JobState, JobStore, new_job_id


def _job(store: JobStore, status: str | None, completed_at: int | None = None) -> str:
    now = time.time()
    record = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now, request=StoredRequest(prompt="x"))
    store.create(record)
    if status is not None:
        store.set_state(record.id, JobState(status=status, completed_at=completed_at))
    return record.id


def test_retention_defaults_to_seven_days_and_null_keeps_jobs_forever(tmp_path):
    assert AppConfig().storage.retention_s == 7 * 24 * 3600
    assert JobStore.from_config(StorageConfig(url=str(tmp_path))).retention_s == 7 * 24 * 3600
    assert JobStore.from_config(StorageConfig(url=str(tmp_path), retention_s=None)).retention_s is None
    with pytest.raises(ValueError, match="retention_s"):
        StorageConfig(retention_s=0)


def test_run_once_removes_what_has_expired_by_the_clock(tmp_path):
    t = time.time()
    clock = [t]
    store = JobStore(str(tmp_path), retention_s=60)
    old = _job(store, "completed", completed_at=int(t))
    unfinished = _job(store, None)
    sweeper = RetentionSweeper(store, period_s=3600, clock=lambda: clock[0])
    assert sweeper.run_once() == []
    clock[0] = t + 61
    assert sweeper.run_once() == [old]
    assert store.ids() == [unfinished] and (sweeper.sweeps, sweeper.removed_total) == (2, 1)


def test_the_loop_sweeps_every_period_and_a_failed_sweep_does_not_end_it(tmp_path, caplog):
    store = JobStore(str(tmp_path), retention_s=1)
    expired = {_job(store, "failed", completed_at=int(time.time()) - 10) for _ in range(3)}
    calls = []
    real_sweep = store.sweep

    def flaky_sweep(now=None):
        calls.append(now)
        if len(calls) == 1:
            raise OSError("store unreachable")
        return real_sweep(now)

    store.sweep = flaky_sweep
    sweeper = RetentionSweeper(store, period_s=0.01, clock=lambda: time.time() + 10)

    async def until_three_sweeps() -> None:
        task = asyncio.create_task(sweeper.run())
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(until_three_sweeps(), timeout=60))
    assert store.ids() == [] and sweeper.removed_total == len(expired)
    assert "retention sweep failed" in caplog.text


def test_period_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="period_s"):
        RetentionSweeper(JobStore(str(tmp_path)), period_s=0)
