"""What `pab serve` and the other commands print: the start banner, one line per job end (from the job store), errors
as one line naming the field; and a whole `pab serve` session with five jobs, its console under 40 lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pab.runtime.request.request import StoredRequest
from pab.runtime.stats import GenerationStats, KindCounts, PABCounts, StageTimings
from serve_app import console
from serve_app.config import AppConfig
from serve_app.store import JobRecord, JobState, JobStore, new_job_id
from tests.conftest import REPO_ROOT, in_loopback_namespace


def test_the_banner_says_what_is_served_where_with_what_and_where_the_rest_goes() -> None:
    config = AppConfig(storage={"url": "/srv/pab-store"}, api_key_env="PAB_API_KEY",
                       quality_watch={"sample_rate": 0.25, "fallback_preset": "PAB-246"})
    lines = console.banner(config, "http://127.0.0.1:8000", "/tmp/ray/session_x/logs")
    text = "\n".join(lines)
    assert len(lines) <= 8
    for part in ("tiny-shapes on cpu", "2 workers per replica", "http://127.0.0.1:8000/v1",
                 "http://127.0.0.1:8000/playground", "/srv/pab-store", "storage.url=", "on (1 key(s))",
                 "sampling 25% of PAB jobs", "fallback PAB-246", "/tmp/ray/session_x/logs", "--log-level"):
        assert part in text, part
    assert "off: loopback only" in "\n".join(console.banner(AppConfig(), "http://x", None))


def _job(store: JobStore, prompt: str) -> str:
    request = StoredRequest(prompt=prompt, model="tiny-shapes", num_frames=4, height=16, width=16,
                                num_inference_steps=4, guidance_scale=3.0, seed=1, fps=4, pab={"name": "PAB-246"})
    record = JobRecord(id=new_job_id(), created_at=int(time.time()), submitted_at=time.time(), request=request)
    store.create(record)
    return record.id


def test_each_job_end_is_one_line_once_and_jobs_finished_before_the_start_are_not_repeated(tmp_path) -> None:
    store = JobStore(str(tmp_path))
    old = _job(store, "old")
    store.set_state(old, JobState(status="completed", completed_at=int(time.time())))
    resumed = _job(store, "resumed")  # unfinished when the console starts: its end is reported
    ends = console.JobEnds(store)
    assert ends.poll() == []
    done, failed, gone = _job(store, "done"), _job(store, "failed"), _job(store, "gone")
    assert ends.poll() == []  # nothing ended yet
    stats = GenerationStats(pab=PABCounts(preset="PAB-246", attention=KindCounts(calls=10, broadcast=5, hit_rate=0.5)),
                            timings=StageTimings(total_s=1.25))
    store.set_state(done, JobState(status="completed", progress=100, stats=stats))
    store.set_state(failed, JobState(status="failed", error={"code": "generation_failed", "message": "boom\nmore"}))
    store.set_state(resumed, JobState(status="completed", stats=stats))
    store.delete(gone)
    lines = ends.poll()
    assert sorted(lines) == sorted([
        f"job {done} completed   1.25 s  PAB PAB-246: hit rate 50%",
        f"job {resumed} completed   1.25 s  PAB PAB-246: hit rate 50%",
        f"job {gone} deleted",
        next(line for line in lines if line.startswith(f"job {failed} failed ")),
    ])
    assert lines[[line.split()[1] for line in lines].index(failed)].endswith("generation_failed: boom")
    assert ends.poll() == []  # each end once


def test_a_job_whose_record_is_being_written_is_not_reported_deleted(tmp_path) -> None:
    """The ingress makes a job's folder before it writes request.json; a poll in between must keep following it."""
    store = JobStore(str(tmp_path))
    ends = console.JobEnds(store)
    job = _job(store, "done")
    request = store._path(job, "request.json")
    record = store._read(request)
    store._fs.rm(request)  # the moment between the folder and the record
    assert store.ids() == [job] and not store.exists(job)
    assert ends.poll() == []
    store._write(request, record)
    store.set_state(job, JobState(status="completed", progress=100))
    assert [line.split()[:3] for line in ends.poll()] == [["job", job, "completed"]]


def test_errors_are_one_line_naming_the_field() -> None:
    from pydantic import ValidationError

    from pab.config import PABConfigError
    from pab.runtime.request.params import RequestError

    with pytest.raises(ValidationError) as bad_config:
        AppConfig(limits={"max_frames": 0})
    assert console.error_line(bad_config.value) == "limits.max_frames: Input should be greater than or equal to 1"
    assert console.error_line(RequestError("num_frames", "num_frames: must be 4\ngot 9")) == "frames: must be 4"
    assert console.error_line(PABConfigError("unknown preset 'x'")) == "pab: unknown preset 'x'"


def test_pab_generate_with_a_word_the_model_does_not_know_is_one_line_naming_prompt() -> None:
    done = subprocess.run([sys.executable, "-m", "serve_app.entrypoints.cli", "generate", "a cat"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("pab generate: prompt: this model has a closed vocabulary") and "'cat'" in line
    assert "Traceback" not in done.stderr + done.stdout


def test_the_cli_examples_use_words_the_default_model_knows() -> None:
    from pab.runtime.request.params import prompt_words
    from serve_app.entrypoints import cli

    vocabulary = {"a", "moving", "red", "green", "blue", "yellow", "square", "disc", "triangle", "left", "right",
                  "up", "down"}
    quoted = [part.split('"')[1] for part in cli.__doc__.splitlines() if part.count('"') >= 2]
    assert len(quoted) >= 3
    for prompt in quoted:
        assert set(prompt_words(prompt)) <= vocabulary, prompt


@pytest.mark.ray
@pytest.mark.slow
def test_a_serve_session_with_five_jobs_prints_under_40_lines(tmp_path) -> None:
    """`pab serve` (a Ray of its own) from start to Ctrl-C, five jobs through the API: the banner, a ready line,
    one line per job, the shutdown; no request logs, no library warnings, no traceback."""
    import httpx

    from cluster.local_cluster import free_port

    if not in_loopback_namespace():
        pytest.skip("opens ports: run inside scripts/loopback-only")
    port, store, out = free_port(), tmp_path / "store", tmp_path / "console.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "serve_app.entrypoints.cli", "serve", "--port", str(port), "--num-cpus", "2",
               f"storage.url={store}", "defaults.num_inference_steps=8"]
    with open(out, "w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 240
        while _status(api) != 200:
            assert server.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        ids = [api.post("/v1/videos", json={"prompt": f"a {c} square moving left", "seed": i}).json()["id"]
               for i, c in enumerate(("red", "green", "blue", "yellow", "red"))]
        while sum(f"job {i} completed" in out.read_text() for i in ids) < len(ids):
            assert server.poll() is None and time.monotonic() < deadline + 120, out.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    lines = out.read_text().splitlines()
    assert server.returncode == 0, lines[-20:]
    assert len(lines) < 40, "\n".join(lines)
    text = "\n".join(lines)
    assert f"store       {store}" in text and "pab-serve: ready in" in text and lines[-1] == "pab-serve: shutting down"
    for noise in ("GET /", "POST /", "Traceback", "c10d", "kept in float32", "INFO"):
        assert noise not in text, noise


def _status(api) -> int | None:
    try:
        return api.get("/health").status_code
    except Exception:  # not listening yet
        return None
