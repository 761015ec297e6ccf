"""Conditioning pixels in files of their own (`videos/<id>/input_reference.png`, `remix_source.png`): request.json
stays small however large the frames, no read but the runner's opens the pixel files, the runner gets the exact bytes,
records written with the PNG inline still load and run, and a missing or corrupt pixel file fails that job only with
`store_corrupt` (no Ray: a fake engine stands in for the workers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from deployments import dispatch, runner
from pab.runtime.request.conditioning import ReferenceImage, SourceVideo, encode_frames
from pab.runtime.request.request import GenerationRequest
from serve_app.config import AppConfig
from serve_app.console import JobEnds
from serve_app.store import STORE_CORRUPT, BadRecord, JobRecord, JobStore, new_job_id
from serve_app.videos import video_object

SIZE = dict(model="tiny-shapes", num_frames=8, height=128, width=128, num_inference_steps=4, guidance_scale=3.0,
            seed=1, fps=8, pab={"name": "PAB-246"})


def _noise(*shape: int, seed: int = 0) -> np.ndarray:
    """Random pixels: they do not compress, so the PNG is as large as the pixels (a 128 x 128 image: 48 KiB, the
    8 frames of a remix: 384 KiB)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _remix(seed: int = 0) -> GenerationRequest:
    frames = _noise(SIZE["num_frames"], SIZE["height"], SIZE["width"], 3, seed=seed)
    source = SourceVideo.from_png("video_0000000000000source", encode_frames(frames), SIZE["num_frames"], 0.6)
    return GenerationRequest(prompt="a blue square moving left", remix=source, **SIZE)


def _image_to_video(seed: int = 0) -> GenerationRequest:
    image = ReferenceImage.from_rgb(_noise(SIZE["height"], SIZE["width"], 3, seed=seed))
    return GenerationRequest(prompt="a red square moving right", input_reference=image, **SIZE)


def _create(store: JobStore, request: GenerationRequest) -> JobRecord:
    now = time.time()
    stored, pixels = request.detach()
    record = JobRecord(id=new_job_id(), created_at=int(now), submitted_at=now, request=stored)
    store.create(record, pixels)
    return record


def _legacy(store: JobStore, request: GenerationRequest) -> str:
    """A job as the store wrote it before the pixels had files: the PNG inline in request.json, base64, first key."""
    payload = {}
    for field in ("input_reference", "remix"):
        value = getattr(request, field)
        payload[field] = None if value is None else {
            "png": base64.b64encode(value.png).decode(), **value.model_dump(mode="json", exclude={"png"})}
    job_id = new_job_id()
    folder = store._dir(job_id)
    store._fs.makedirs(f"{folder}/claims", exist_ok=True)
    body = {"id": job_id, "created_at": int(time.time()), "submitted_at": time.time(),
            "request": {**request.model_dump(mode="json", exclude={"input_reference", "remix"}), **payload},
            "tenant": None}
    store._fs.pipe_file(f"{folder}/request.json", json.dumps(body).encode())
    return job_id


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    url = str(tmp_path / "store") if request.param == "local" else f"memory://pab-pixels-{time.time_ns()}"
    return JobStore(url)


@pytest.mark.parametrize("make, file", [(_remix, "remix_source.png"), (_image_to_video, "input_reference.png")])
def test_the_record_stays_small_and_the_runner_gets_the_exact_bytes(store, make, file):
    request = make()
    record = _create(store, request)
    raw = store._fs.cat_file(store._path(record.id, "request.json"))
    pixels = store._fs.cat_file(store._path(record.id, file))
    assert len(raw) < 4096 and len(pixels) > 40 * 1024, (len(raw), len(pixels))
    assert b"png" not in raw
    assert store.record(record.id) == record
    runnable = store.runnable(record)
    assert isinstance(runnable, GenerationRequest) and runnable == request
    payload = runnable.remix or runnable.input_reference
    assert payload.png == pixels == (request.remix or request.input_reference).png
    assert store.check() == []


def test_the_pixel_files_are_written_before_the_record(store, monkeypatch):
    written = []
    write = store._write
    monkeypatch.setattr(store, "_write", lambda path, data: (written.append(path.rsplit("/", 1)[-1]),
                                                             write(path, data)))
    _create(store, _remix())
    assert written == ["remix_source.png", "request.json"]


def test_create_refuses_a_record_whose_pixels_are_not_given(store):
    stored, _ = _remix().detach()
    record = JobRecord(id=new_job_id(), created_at=0, submitted_at=0.0, request=stored)
    with pytest.raises(ValueError, match="remix"):
        store.create(record)
    assert not store.exists(record.id)
    with pytest.raises(KeyError, match="remix"):
        stored.attach({})  # no pixel-less request is ever made runnable


def test_polls_listings_the_console_and_the_dispatcher_scan_never_open_pixel_files(store, monkeypatch):
    ids = [_create(store, _remix()).id, _create(store, _image_to_video()).id]
    opened: list[str] = []
    read = store._read
    monkeypatch.setattr(store, "_read", lambda path: (opened.append(path), read(path))[1])
    videos = [video_object(store.record(i), store.state(i)) for i in ids]
    assert videos[0].remixed_from_video_id == "video_0000000000000source"
    assert videos[1].input_reference_sha256 == _image_to_video().input_reference.sha256
    page, _ = store.page(after=None, limit=10, order="desc")
    assert [r.id for r in page] == ids[::-1]
    assert store.unfinished_ids() == ids
    assert [i for i, _ in dispatch.Dispatcher(None, store, AppConfig())._unfinished()] == ids
    JobEnds(store).poll()
    assert opened and not [p for p in opened if p.endswith(".png")], opened


def test_a_record_with_the_png_inline_still_loads_and_runs(store):
    for request in (_remix(), _image_to_video()):
        job_id = _legacy(store, request)
        record = store.record(job_id)
        assert record is not None and record.request.detached() == {}
        assert video_object(record, store.state(job_id)).seed == 1
        assert store.runnable(record) == request
    assert store.check() == []


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_pixel_file_is_a_bad_record_of_that_job_only(store, damage):
    bad, good = _create(store, _remix(seed=1)), _create(store, _remix(seed=2))
    path = store._path(bad.id, "remix_source.png")
    if damage == "missing":
        store._fs.rm(path)
    else:
        store._fs.pipe_file(path, b"not the png" + store._fs.cat_file(path)[11:])
    found = store.runnable(store.record(bad.id))
    assert isinstance(found, BadRecord) and found.file == f"videos/{bad.id}/remix_source.png"
    assert found.reason == "missing" if damage == "missing" else "sha256" in found.reason
    assert store.check() == [found]
    assert isinstance(store.runnable(store.record(good.id)), GenerationRequest)
    assert [r.id for r in store.page(after=None, limit=10, order="asc")[0]] == [bad.id, good.id]
    assert store.quarantine(bad.id) == f"quarantine/{bad.id}"
    assert store.check() == [] and store.ids() == [good.id]


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_a_pixel_read_that_fails_is_read_again_before_the_job_is_failed(store, monkeypatch, failures):
    """A remote store's read can fail once and work a moment later: only `PIXEL_READ_ATTEMPTS` failed reads in a row
    make the job's pixels bad (a missing file is bad at once: `test_a_bad_pixel_file_is_a_bad_record_of_that_job_only`)."""
    from serve_app import store as store_module

    monkeypatch.setattr(store_module, "PIXEL_READ_BACKOFF_S", 0.0)
    request = _image_to_video()
    record = _create(store, request)
    reads: list[str] = []
    read = store._read

    def flaky(path: str) -> bytes | None:
        if path.endswith(".png"):
            reads.append(path)
            if len(reads) <= failures:
                raise TimeoutError("read timed out")
        return read(path)

    monkeypatch.setattr(store, "_read", flaky)
    found = store.runnable(record)
    if failures < store_module.PIXEL_READ_ATTEMPTS:
        assert found == request and len(reads) == failures + 1
    else:
        assert isinstance(found, BadRecord) and len(reads) == store_module.PIXEL_READ_ATTEMPTS
        assert found.reason == "TimeoutError: read timed out (3 reads)"


class _Engine:
    """Stands in for the generation engine: records the requests it was given and completes each."""

    def __init__(self) -> None:
        self.ran: list[GenerationRequest] = []

    def job(self, request: GenerationRequest, job_id: str) -> SimpleNamespace:
        return SimpleNamespace(request=request, job_id=job_id, started_at=None, queued_at=time.time(), on_progress=None)

    async def submit(self, job: SimpleNamespace) -> SimpleNamespace:
        self.ran.append(job.request)
        return SimpleNamespace(content=lambda variant: b"content", frames=b"",
                               stats=SimpleNamespace(with_timings=lambda **_: None))

    async def cancel(self, job: SimpleNamespace) -> None:
        pass


def test_the_runner_fails_a_job_whose_pixels_are_bad_and_runs_the_others(store, monkeypatch):
    monkeypatch.setattr(runner.metrics, "record_job_finished", lambda *a, **k: None)
    bad, good, old = _create(store, _remix(seed=1)), _create(store, _image_to_video(seed=2)), _remix(seed=3)
    old_id = _legacy(store, old)
    digest = hashlib.sha256(b"other").hexdigest()
    assert digest != store.record(bad.id).request.remix.sha256
    store._fs.pipe_file(store._path(bad.id, "remix_source.png"), b"other")
    engine = _Engine()
    jobs = runner.JobRunner(store, engine, AppConfig(), "replica-1", "tiny-shapes")
    assert [asyncio.run(jobs.run(i)) for i in (bad.id, good.id, old_id)] == ["failed", "completed", "completed"]
    error = store.state(bad.id).error
    assert error["code"] == STORE_CORRUPT and f"videos/{bad.id}/remix_source.png" in error["message"]
    assert engine.ran == [_image_to_video(seed=2), old]
    assert engine.ran[0].input_reference.png == _image_to_video(seed=2).input_reference.png
