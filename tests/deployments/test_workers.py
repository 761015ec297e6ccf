"""Worker-side pieces that need no Ray cluster: rank 0's step clock (progress off the denoising loop) and the
interface lookup that pins gloo to the node address."""

from __future__ import annotations

import time

from deployments.workers import JobProgress, _interface_for, _StepClock
from serve_app.schemas import GenerationRequest
from serve_app.store import JobRecord, JobStore, new_job_id


def test_step_clock_writes_progress_in_the_background_and_flushes_on_close(tmp_path):
    store = JobStore(str(tmp_path))
    now = time.time()
    record = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now, request=GenerationRequest(prompt="a"))
    store.create(record)
    clock = _StepClock(JobProgress(str(tmp_path), record.id, started_at=now, interval_s=0.0))
    for step in range(10):
        clock(step, 10)
        time.sleep(0.01)
    clock.close()
    state = store.state(record.id)
    assert state.status == "in_progress" and 0 < state.progress <= 99 and state.started_at == now
    assert len(clock.step_seconds) == 10
    written = state.updated_at
    time.sleep(0.05)
    assert store.state(record.id).updated_at == written  # nothing lands after close()


def test_step_clock_without_a_job_only_times_steps():
    clock = _StepClock(None)
    clock(0, 2)
    clock(1, 2)
    clock.close()
    assert len(clock.step_seconds) == 2


def test_gloo_interface_for_the_node_address():
    assert _interface_for("127.0.0.1") == "lo"
    assert _interface_for("203.0.113.7") is None  # an address no interface holds
