"""The job store on a local directory and on an fsspec URL (memory://), and the progress writer."""

from __future__ import annotations

import time

import pytest

from serve_app.schemas import GenerationRequest
from serve_app.store import JobRecord, JobState, JobStore, ProgressThrottle, new_job_id


def _record(store: JobStore, prompt: str = "a cat") -> JobRecord:
    now = time.time()
    record = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now, request=GenerationRequest(prompt=prompt))
    store.create(record)
    return record


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    url = str(tmp_path / "store") if request.param == "local" else f"memory://pab-test-{time.time_ns()}"
    return JobStore(url)


def test_records_state_content_and_delete(store):
    record = _record(store)
    assert store.record(record.id) == record
    assert store.state(record.id) == JobState()  # no state written yet: queued
    assert store.set_state(record.id, JobState(status="completed", progress=100))
    assert store.state(record.id).status == "completed" and store.state(record.id).updated_at > 0
    store.put_content(record.id, "video", b"mp4 bytes")
    assert store.content(record.id, "video") == b"mp4 bytes"
    assert store.content(record.id, "thumbnail") is None
    assert store.delete(record.id)
    assert store.record(record.id) is None and not store.delete(record.id)
    assert not store.set_state(record.id, JobState(status="failed"))  # a deleted job is not brought back
    assert store.ids() == []


def test_a_second_store_on_the_same_url_sees_everything(tmp_path):
    first = JobStore(str(tmp_path))
    record = _record(first)
    first.put_card("tiny-latte", '{"name": "tiny-latte"}')
    second = JobStore(str(tmp_path))  # e.g. a restarted ingress replica
    assert second.record(record.id) == record
    assert second.card("tiny-latte") == '{"name": "tiny-latte"}'
    assert second.card("other/model") is None


def test_pages_in_creation_order(store):
    ids = [_record(store, f"prompt {i}").id for i in range(5)]
    assert store.ids() == ids
    page, more = store.page(after=None, limit=2, order="asc")
    assert [r.id for r in page] == ids[:2] and more
    page, more = store.page(after=ids[1], limit=2, order="asc")
    assert [r.id for r in page] == ids[2:4] and more
    page, more = store.page(after=ids[3], limit=2, order="asc")
    assert [r.id for r in page] == ids[4:] and not more
    page, more = store.page(after=None, limit=3, order="desc")
    assert [r.id for r in page] == ids[::-1][:3] and more
    page, more = store.page(after=ids[1], limit=3, order="desc")
    assert [r.id for r in page] == [ids[0]] and not more


@pytest.mark.parametrize("bad", ["../../etc", "video_../x", "nope", "video_a/b"])
def test_ids_cannot_leave_the_store(store, bad):
    assert store.record(bad) is None
    assert not store.exists(bad)


def test_progress_throttle_is_monotonic_capped_and_throttled():
    throttle = ProgressThrottle(interval_s=3600.0)
    assert throttle(1, 4) == 24
    assert throttle(2, 4) is None  # inside the interval: skipped
    assert throttle(4, 4) == 99  # the last step is always written, capped below 100 until the video is stored
    unthrottled = ProgressThrottle(interval_s=0.0)
    seen = [unthrottled(step, 10) for step in range(1, 11)]
    assert None not in seen and seen == sorted(seen) and seen[-1] == 99 and len(set(seen)) == 10
    assert unthrottled(10, 10) is None  # never the same value twice


def test_poll_hint_is_half_the_estimated_remaining_time_within_bounds():
    assert JobState().poll_after_ms(100.0, 50, 1000) == 1000  # queued: nothing known yet
    running = JobState(status="in_progress", started_at=100.0, progress=25)
    assert running.poll_after_ms(101.0, 50, 10_000) == 1500  # 1 s for 25% -> 3 s left -> poll in 1.5 s
    assert running.poll_after_ms(101.0, 50, 1000) == 1000
    assert JobState(status="in_progress", started_at=100.0, progress=99).poll_after_ms(104.0, 50, 1000) == 50
    assert JobState(status="in_progress", started_at=100.0, progress=0).poll_after_ms(104.0, 50, 1000) == 1000


def test_remaining_time_is_measured_up_to_the_progress_write_not_up_to_the_poll():
    # 25% written at t=101 (1 s for 25%): 3 s left then; polled half a second later, 2.5 s are left, not 4.5 s
    state = JobState(status="in_progress", started_at=100.0, progress=25, updated_at=101.0)
    assert state.remaining_s(101.5) == 2.5
    assert state.poll_after_ms(101.5, 50, 10_000) == 1250
    assert state.remaining_s(110.0) == 0.0  # overdue: no negative estimate
    assert JobState(status="queued").remaining_s(101.0) is None
