"""The job store on a local directory and on an fsspec URL (memory://), and the progress writer."""

from __future__ import annotations

import time

import pytest

from pab.runtime.request.request import StoredRequest
from serve_app.store import JobRecord, JobState, JobStore, ProgressThrottle, new_job_id


def _record(store: JobStore, prompt: str = "a cat") -> JobRecord:
    now = time.time()
    record = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now, request=StoredRequest(prompt=prompt))
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


# ---- bad records ---------------------------------------------------------------------------------------------------
def _corrupt(store: JobStore, job_id: str, name: str, data: bytes = b'{"status": "complet') -> None:
    store._fs.pipe_file(store._path(job_id, name), data)


def test_an_unreadable_state_reads_as_failed_store_corrupt_and_names_the_file(store):
    record = _record(store)
    _corrupt(store, record.id, "state.json")
    state = store.state(record.id)
    assert state.status == "failed" and state.terminal and state.corrupt
    assert state.error["code"] == "store_corrupt"
    assert f"videos/{record.id}/state.json" in state.error["message"]
    assert "pab store check --quarantine" in state.error["message"] and "resubmit" in state.error["message"]
    assert store.record(record.id) == record  # the request is fine: the job is listed, as failed
    assert [r.id for r in store.page(after=None, limit=10, order="asc")[0]] == [record.id]
    assert store.set_state(record.id, JobState(status="completed"))  # a writer may still heal it
    assert store.state(record.id).status == "completed"


@pytest.mark.parametrize("data", [b"", b"\xff\xfe not utf-8", b'{"id": 3}', b"[]", b"null"])
def test_an_unreadable_request_reads_as_absent_and_listings_skip_it(store, data):
    before, bad, after = _record(store, "before"), _record(store, "bad"), _record(store, "after")
    _corrupt(store, bad.id, "request.json", data)
    assert store.record(bad.id) is None
    for order in ("asc", "desc"):
        page, more = store.page(after=None, limit=10, order=order)
        assert sorted(r.id for r in page) == sorted([before.id, after.id]) and not more
    page, more = store.page(after=None, limit=1, order="asc")  # `more` looks past the bad record to a real one
    assert [r.id for r in page] == [before.id] and more
    page, more = store.page(after=before.id, limit=1, order="asc")
    assert [r.id for r in page] == [after.id] and not more


def test_a_state_path_that_cannot_be_read_at_all_is_a_bad_record_too(tmp_path):
    store = JobStore(str(tmp_path))
    record = _record(store)
    (tmp_path / "videos" / record.id / "state.json").mkdir()  # IsADirectoryError on read
    assert store.state(record.id).error["code"] == "store_corrupt"
    assert [b.file for b in store.check()] == [f"videos/{record.id}/state.json"]


def test_unfinished_jobs_are_enumerated_past_bad_records(store):
    done, corrupt_state, corrupt_request, queued, running = (_record(store, p) for p in "abcde")
    store.set_state(done.id, JobState(status="completed"))
    _corrupt(store, corrupt_state.id, "state.json")
    _corrupt(store, corrupt_request.id, "request.json")
    store.set_state(running.id, JobState(status="in_progress", progress=40))
    assert store.unfinished_ids() == [queued.id, running.id]


def test_each_bad_file_is_logged_once_per_process_not_per_read(store, caplog):
    record = _record(store)
    other = _record(store)
    _corrupt(store, record.id, "state.json")
    _corrupt(store, other.id, "request.json")
    with caplog.at_level("WARNING", logger="ray.serve"):
        for _ in range(3):
            store.state(record.id), store.record(other.id), store.page(after=None, limit=5, order="asc")
            store.unfinished_ids(), JobStore(store.url).state(record.id)
    lines = [r.getMessage() for r in caplog.records if "pab store" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any(f"videos/{record.id}/state.json" in line for line in lines)
    assert any(f"videos/{other.id}/request.json" in line for line in lines)


def test_check_lists_bad_records_and_quarantine_moves_them_out_of_every_listing(store):
    good = _record(store, "good")
    bad_state, bad_request = _record(store, "bad state"), _record(store, "bad request")
    store.put_content(bad_state.id, "video", b"mp4")
    _corrupt(store, bad_state.id, "state.json")
    _corrupt(store, bad_request.id, "request.json", b"{")
    found = store.check()
    assert sorted((b.job_id, b.file.rsplit("/", 1)[1]) for b in found) == sorted(
        [(bad_state.id, "state.json"), (bad_request.id, "request.json")]
    )
    assert all(b.reason for b in found)
    moved = store.quarantine(bad_state.id)
    assert moved == f"quarantine/{bad_state.id}"
    assert store._fs.cat_file(f"{store._root}/{moved}/video.mp4") == b"mp4"  # kept whole for an operator
    store.quarantine(bad_request.id)
    assert store.check() == [] and store.ids() == [good.id] and store.unfinished_ids() == [good.id]


def test_a_job_folder_without_its_request_is_bad_only_once_it_is_old(tmp_path):
    store = JobStore(str(tmp_path))
    job_id = new_job_id()
    (tmp_path / "videos" / job_id).mkdir()  # being created right now, or left behind
    assert store.check() == []
    (bad,) = store.check(now=time.time() + 3600)
    assert (bad.job_id, bad.reason) == (job_id, "missing")


def test_local_writes_fsync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    import os

    store = JobStore(str(tmp_path))
    record = _record(store)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b)))
    store.set_state(record.id, JobState(status="completed"))
    path = str(tmp_path / "videos" / record.id / "state.json")
    (tmp,) = {e[1] for e in events if e[0] == "replace"}
    assert tmp.startswith(path) and tmp.endswith(".tmp")
    assert events == [("fsync", tmp), ("replace", tmp, path), ("fsync", os.path.dirname(path))]


def test_a_write_that_fails_before_the_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import os

    store = JobStore(str(tmp_path))
    record = _record(store)
    store.set_state(record.id, JobState(status="in_progress", progress=30))

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.set_state(record.id, JobState(status="completed"))
    monkeypatch.undo()
    assert store.state(record.id).progress == 30
    assert sorted(p.name for p in (tmp_path / "videos" / record.id).iterdir()) == ["claims", "request.json", "state.json"]


# ---- tenancy and retention -----------------------------------------------------------------------------------------
def _tenant_record(store: JobStore, tenant: str | None) -> JobRecord:
    now = time.time()
    record = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now,
                       request=StoredRequest(prompt="a cat"), tenant=tenant)
    store.create(record)
    return record


def test_pages_and_unfinished_jobs_filter_by_tenant(store):
    a1, b1, legacy, a2 = (_tenant_record(store, t) for t in ("alice", "bob", None, "alice"))
    assert store.record(a1.id).tenant == "alice"
    page, more = store.page(after=None, limit=1, order="asc", tenant="alice")
    assert [r.id for r in page] == [a1.id] and more
    page, more = store.page(after=a1.id, limit=1, order="asc", tenant="alice")
    assert [r.id for r in page] == [a2.id] and not more  # bob's and the legacy job do not count as "more"
    assert [r.id for r in store.page(after=None, limit=9, order="desc", tenant="bob")[0]] == [b1.id]
    # a job written before tenancy (or with auth off) belongs to the single-key mode's tenant
    assert [r.id for r in store.page(after=None, limit=9, order="asc", tenant="default")[0]] == [legacy.id]
    assert len(store.page(after=None, limit=9, order="asc")[0]) == 4  # no tenant: auth off, every job
    assert store.unfinished_ids(tenant="alice") == [a1.id, a2.id]


def test_expires_at_is_completion_plus_retention_and_none_while_unfinished(tmp_path):
    store = JobStore(str(tmp_path), retention_s=100)
    record = _record(store)
    assert store.expires_at(record) is None  # queued
    store.set_state(record.id, JobState(status="in_progress"))
    assert store.expires_at(record) is None
    store.set_state(record.id, JobState(status="completed", completed_at=record.created_at + 7))
    assert store.expires_at(record) == record.created_at + 107
    assert store.expires_at(record, JobState(status="failed")) == record.created_at + 100  # no completed_at
    assert JobStore(str(tmp_path)).expires_at(record) is None  # retention None: kept forever


def test_sweep_removes_expired_finished_jobs_and_their_files_only(tmp_path):
    store = JobStore(str(tmp_path), retention_s=100)
    t = time.time()
    old_done, new_done, old_failed, queued, running, corrupt = (_record(store, p) for p in "abcdef")
    store.set_state(old_done.id, JobState(status="completed", completed_at=int(t) + 10))
    store.put_content(old_done.id, "video", b"mp4")
    store.set_state(new_done.id, JobState(status="completed", completed_at=int(t) + 100))
    store.set_state(old_failed.id, JobState(status="failed", completed_at=int(t)))
    store.set_state(running.id, JobState(status="in_progress", progress=50))
    _corrupt(store, corrupt.id, "state.json")
    assert store.sweep(now=t + 50) == []  # nothing is old enough yet
    assert sorted(store.sweep(now=t + 150)) == sorted([old_done.id, old_failed.id])
    assert not (tmp_path / "videos" / old_done.id).exists()
    assert store.ids() == sorted([new_done.id, queued.id, running.id, corrupt.id])
    assert store.sweep(now=t + 150) == []  # idempotent: another replica sweeping next finds nothing
    assert sorted(store.sweep(now=t + 10**6)) == [new_done.id]  # unfinished and bad records are never swept
    assert JobStore(str(tmp_path)).sweep(now=t + 10**9) == []  # retention None


def test_pab_store_check_reports_quarantines_and_exits_1_while_bad_records_remain(tmp_path, capsys):
    from serve_app.entrypoints import cli

    store = JobStore(str(tmp_path))
    good, bad = _record(store, "good"), _record(store, "bad")
    _corrupt(store, bad.id, "state.json")
    assert cli.main(["store", "check", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{bad.id}  videos/{bad.id}/state.json  ValidationError" in out and good.id not in out
    assert "1 bad job record(s), 0 quarantined, 1 remain" in out
    assert store.ids() == [good.id, bad.id]  # listing only: nothing moved

    assert cli.main(["store", "check", "--store", str(tmp_path), "--quarantine"]) == 0
    assert f"{bad.id}  moved to quarantine/{bad.id}" in capsys.readouterr().out
    assert (tmp_path / "quarantine" / bad.id / "state.json").exists()
    assert store.ids() == [good.id]
    assert cli.main(["store", "check", "--store", str(tmp_path)]) == 0
    assert "0 bad job record(s)" in capsys.readouterr().out
