"""Bad records in the live app's store (issue 12, defect 1): a torn state file and an unreadable request never turn
into a 500, and a restarted ingress still resumes every unfinished job past them.

Run: scripts/loopback-only .venv/bin/python -m pytest tests/serve_app/test_store_faults.py
"""

from __future__ import annotations

import time

import pytest

from serve_app.store import JobRecord, JobStore, new_job_id
from tests.conftest import PAB_INGRESS_ACTOR

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _clone(store: JobStore, record: JobRecord, seed: int) -> str:
    """A job as an ingress that died right after accepting it leaves it: a record, no state, never dispatched."""
    now = time.time()
    request = record.request.model_copy(update={"seed": seed})
    clone = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now, request=request, tenant=record.tenant)
    store.create(clone)
    return clone.id


def _restart_ingress(pab_app, api) -> None:
    import ray

    (old,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(PAB_INGRESS_ACTOR)]
    ray.kill(ray.get_actor(old["name"], namespace=old["namespace"]), no_restart=True)
    pab_app.wait_for(
        lambda: [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(PAB_INGRESS_ACTOR) and a["name"] != old["name"]],
        timeout=120, what="a new ingress replica",
    )
    pab_app.wait_for(lambda: api.http.get("/health").status_code == 200, timeout=120, what="the ingress to answer")


def test_bad_records_answer_4xx_or_failed_and_never_strand_the_other_jobs(pab_app):
    api, store, http = pab_app.client(), pab_app.store, pab_app.client().http
    template = api.wait(api.create(prompt="a cat", steps=2, seed=1)["id"])
    assert template["status"] == "completed"
    record = store.record(template["id"])
    torn_state, torn_request = _clone(store, record, 2), _clone(store, record, 3)
    store._fs.pipe_file(store._path(torn_state, "state.json"), b'{"status": "complet')
    store._fs.pipe_file(store._path(torn_request, "request.json"), b"\x00\x01 not json")

    video = api.get(torn_state)
    assert video["status"] == "failed" and video["error"]["code"] == "store_corrupt"
    assert f"videos/{torn_state}/state.json" in video["error"]["message"]
    assert http.get(f"/v1/videos/{torn_state}/content").status_code == 409  # not completed, not a 500
    for path in (f"/v1/videos/{torn_request}", f"/v1/videos/{torn_request}/content"):
        response = http.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (path, response.text)
    for order in ("asc", "desc"):
        listing = http.get("/v1/videos", params={"order": order, "limit": 100})
        assert listing.status_code == 200, listing.text
        ids = [v["id"] for v in listing.json()["data"]]
        assert torn_state in ids and torn_request not in ids

    waiting = [_clone(store, record, seed) for seed in (4, 5, 6)]
    _restart_ingress(pab_app, api)  # its resume meets both bad records before the three waiting jobs
    for job_id in waiting:
        finished = api.wait(job_id, timeout=180)
        assert finished["status"] == "completed", finished["error"]
    assert api.get(torn_state)["error"]["code"] == "store_corrupt"
    assert {b.job_id for b in store.check()} == {torn_state, torn_request}
    for job_id in (torn_state, torn_request):
        store.quarantine(job_id)  # leave the session's store clean for the tests after this one
    assert store.check() == []
