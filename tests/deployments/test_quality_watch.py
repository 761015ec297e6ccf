"""The quality watch without Ray: the pooled state and its fallback decision, the workers' served-frames cache, the
measurement itself on the trained tiny model (the figures `bench/quality.py` computes), and the watch inside the
engine with a stand-in worker group: it measures only while idle, a job that arrives preempts it at a step end (the
job's batch never overlaps it), and a median below the floor switches jobs naming no preset to the fallback.

The same watch on a served app, against a real Prometheus: tests/cluster/test_quality_watch_live.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest

from deployments import metrics
from deployments.engine import GenerationEngine
from deployments.quality_probe import ServedFrames, measure
from deployments.quality_watch import QualityWatch
from deployments.workers import BatchStopped
from pab.runtime.request.card import ModelCard
from pab.presets import get_preset
from serve_app.config import AppConfig
from serve_app.quality import PSNR_CAP_DB, PresetChooser, QualitySample, QualityStatus, read_status, status_key
from serve_app.store import JobStore
from tests.deployments.test_engine_unit import FakeGroup, _request
from tests.deployments.test_metrics import _Recorder

REFERENCE = get_preset("reference", "latte").to_dict()
PAB_246 = get_preset("PAB-246", "latte").to_dict()
CARD = ModelCard(name="m", adapter="latte", defaults={}, geometry={"transformer_config": {}}, created=0)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    fake = SimpleNamespace(**{name: _Recorder() for name in metrics._SPECS})
    monkeypatch.setattr(metrics, "_metrics", lambda: fake)
    return fake


def _config(tmp_path, **watch) -> AppConfig:
    return AppConfig(storage={"url": str(tmp_path / "store")}, pab_preset="reference",
                     quality_watch={"sample_rate": 1.0, "fallback_preset": "PAB-246", **watch})


# ---- the pooled state -------------------------------------------------------------------------------------------
def _status() -> QualityStatus:
    return QualityStatus(default_preset="reference:latte", fallback_preset="PAB-246", floor_psnr_db=30.0)


def _add(status: QualityStatus, *psnrs: float, preset: str = "reference:latte") -> QualityStatus:
    for p in psnrs:
        status = status.add(QualitySample.of("video_x", preset, p, 0.9), window=4, min_samples=3)
    return status


def test_the_fallback_needs_min_samples_then_follows_the_rolling_median_of_the_default() -> None:
    status = _add(_status(), 10.0, 12.0)
    assert not status.fallback_active  # two samples: below min_samples, no decision
    status = _add(status, 50.0)
    assert status.median("reference:latte") == 12.0 and status.fallback_active  # median of 10, 12, 50
    status = _add(status, 40.0, 45.0)
    assert status.windows["reference:latte"] == [12.0, 50.0, 40.0, 45.0]  # the window keeps the last 4
    assert status.median("reference:latte") == 42.5 and not status.fallback_active  # recovered
    other = _add(status, 1.0, 1.0, 1.0, preset="PAB-246")
    assert not other.fallback_active, "only the default preset's median decides"
    assert len(other.recent) == 8 and other.recent[-1].preset == "PAB-246"


def test_identical_videos_count_as_the_cap_and_the_state_round_trips_through_the_store(tmp_path) -> None:
    sample = QualitySample.of(None, "PAB-246", math.inf, 1.0)
    assert sample.psnr_db == PSNR_CAP_DB
    store = JobStore(str(tmp_path))
    status = _add(_status(), 10.0, 10.0, 10.0)
    store.put_card("k.quality", status.model_dump_json())
    assert read_status(store, "k.quality") == status
    assert read_status(store, "missing.quality") is None
    store.put_card("torn.quality", status.model_dump_json()[:20])
    assert read_status(store, "torn.quality") is None  # an unreadable state starts afresh, never fails a request


def test_requests_naming_no_preset_resolve_with_the_fallback_while_it_is_active(tmp_path, monkeypatch) -> None:
    import serve_app.quality as quality

    config = _config(tmp_path)
    store = JobStore.from_config(config.storage)
    chooser = PresetChooser(store, config)
    assert chooser.default_preset() == "reference" and chooser.status() is None  # no samples yet
    store.put_card(status_key(config), _add(_status(), 10.0, 10.0, 10.0).model_dump_json())
    assert chooser.default_preset() == "reference", "read at most every STATUS_REFRESH_S"
    monkeypatch.setattr(quality, "STATUS_REFRESH_S", 0.0)
    assert chooser.default_preset() == "PAB-246"
    off = PresetChooser(store, config.model_copy(update={"quality_watch": config.quality_watch.model_copy(
        update={"sample_rate": 0.0})}))
    assert off.default_preset() == "reference"  # the watch off: a stale state decides nothing


# ---- the workers' cache -----------------------------------------------------------------------------------------
def test_served_frames_keep_the_latest_within_the_budget_and_every_rank_agrees_on_hits() -> None:
    budget = 2 * 4 * 16 * 16 * 3  # two 4-frame 16x16 videos
    rank0, rank1 = ServedFrames(budget, keep_frames=True), ServedFrames(budget, keep_frames=False)
    requests = [_request(seed=s) for s in range(3)]
    for i, r in enumerate(requests):
        frames = np.full((4, 16, 16, 3), i, dtype=np.uint8)
        for cache in (rank0, rank1):
            cache.keep_all([SimpleNamespace(request=r, frames=frames)])
    assert [rank0.holds(r) for r in requests] == [rank1.holds(r) for r in requests] == [False, True, True]
    assert int(rank0.get(requests[2])[0, 0, 0, 0]) == 2 and rank1.get(requests[2]) is None  # frames on rank 0 only
    big = _request(size=64)
    rank0.keep(big, np.zeros((4, 64, 64, 3), np.uint8))
    assert not rank0.holds(big) and len(rank0) == 2  # larger than the whole budget: not kept, nothing evicted
    plain = _request(seed=9).model_copy(update={"pab": get_preset("none").to_dict()})
    rank0.keep_all([SimpleNamespace(request=plain, frames=np.zeros((4, 16, 16, 3), np.uint8))])
    assert not rank0.holds(plain)  # a job without PAB is never measured


def test_the_measurement_is_the_offline_figure_for_the_same_seed_with_or_without_cached_frames() -> None:
    """`measure` on the trained tiny model equals `pab.runtime.tools.quality.run_config` (what bench/quality.py and
    `pab eval` run) for the same request: the served frames from the cache or re-generated, and a probe."""
    from pab.runtime.pipelines import VideoGenerator, load_pipeline
    from pab.runtime.request.request import GenerationRequest
    from pab.runtime.tools.quality import run_config

    generator = VideoGenerator(load_pipeline("tiny-shapes"))
    prompt, seed = "a yellow disc moving up", 5
    request = generator.resolve_request(GenerationRequest(prompt=prompt, seed=seed, num_inference_steps=10),
                                        pab="PAB-579")
    params = {"num_inference_steps": 10}
    _, (full,) = run_config(generator, [(prompt, seed)], "none", **params)
    expected, _ = run_config(generator, [(prompt, seed)], "PAB-579", [full], **params)
    probe_expected, _ = run_config(generator, [(prompt, seed)], "PAB-246", [full], **params)

    cache = ServedFrames(2**20, keep_frames=True)
    cache.keep_all(generator.generate_batch([request]))
    steps = []
    hit = measure(generator, request, cache, generator.resolve_pab("PAB-246").to_dict(), lambda i, n: steps.append(i))
    miss = measure(generator, request, ServedFrames(2**20, keep_frames=True), None, lambda i, n: None)
    assert (hit["reproduced"], miss["reproduced"]) == (False, True)
    assert hit["served"] == miss["served"]  # the re-run reproduces the served video exactly
    assert math.isfinite(expected.psnr) and hit["served"]["psnr_db"] == pytest.approx(expected.psnr, abs=1e-9)
    assert hit["served"]["ssim"] == pytest.approx(expected.ssim, abs=1e-9)
    assert hit["probe"]["psnr_db"] == pytest.approx(probe_expected.psnr, abs=1e-9) and miss["probe"] is None
    assert len(steps) == 2 * 10  # the cache hit spared the PAB run: the full model and the probe


# ---- the watch in the engine ------------------------------------------------------------------------------------
class WatchedGroup(FakeGroup):
    """A stand-in group that also runs `measure_quality` (for `measure_steps` steps) and proves no two runs overlap."""

    def __init__(self, step_s: float = 0.01, measure_steps: int = 4, psnr: float = 33.0) -> None:
        super().__init__(step_s)
        self.measure_steps, self.psnr = measure_steps, psnr
        self.calls: list[str] = []
        self.stops = 0
        self._busy = False

    async def run(self, batch, on_progress=None, poll_s=0.0, call="generate", args=()):
        assert not self._busy, "two runs on the worker group at once"
        self._busy = True
        self.calls.append(call if call != "generate" else f"generate:{batch[0].prompt}")
        try:
            if call == "generate":
                return await super().run(batch, on_progress, poll_s)
            self._stop = False
            for _ in range(self.measure_steps):
                await asyncio.sleep(self.step_s)
                if self._stop:
                    raise BatchStopped("stopped")
            probe = {"psnr_db": self.psnr - 1, "ssim": 0.8} if args[0] is not None else None
            return {"served": {"psnr_db": self.psnr, "ssim": 0.9}, "reproduced": False, "probe": probe}
        finally:
            self._busy = False

    async def stop(self) -> None:
        self.stops += 1
        await super().stop()


def _watched(tmp_path, group: WatchedGroup, **watch) -> tuple[GenerationEngine, QualityWatch, AppConfig]:
    config = _config(tmp_path, **watch)
    watcher = QualityWatch(group, JobStore.from_config(config.storage), config, CARD)
    engine = GenerationEngine(group, model="m", per_sample_guidance=False, max_batch_size=1, batch_wait_ms=0,
                              progress_poll_s=0.0, background=watcher)
    return engine, watcher, config


async def _until(predicate, what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_a_pab_job_is_measured_while_idle_and_its_sample_reaches_the_store_and_the_metrics(tmp_path, recorded) -> None:
    async def scenario():
        group = WatchedGroup()
        engine, watcher, config = _watched(tmp_path, group)
        served = engine.job(_request("served").model_copy(update={"pab": PAB_246}), job_id="video_a")
        plain = engine.job(_request("plain").model_copy(update={"pab": get_preset("none").to_dict()}))
        await asyncio.gather(engine.submit(served), engine.submit(plain))  # queued together: no idle spell between
        await _until(lambda: watcher.measured == 1, "the measurement")
        assert watcher.pending == 0  # both jobs were observed before the idle spell: the plain one was not sampled
        await asyncio.sleep(0.05)
        return group.calls, watcher, read_status(JobStore.from_config(config.storage), status_key(config))

    calls, watcher, stored = asyncio.run(scenario())
    assert calls == ["generate:served", "generate:plain", "measure_quality"]  # after both jobs, and only the PAB one
    (sample,) = stored.recent
    assert (sample.job_id, sample.preset, sample.psnr_db, sample.probe) == ("video_a", "PAB-246", 33.0, False)
    tags = (("model", "m"), ("preset", "PAB-246"))
    assert recorded.quality_samples.values[tags] == 1 and recorded.quality_psnr.observed[tags] == [33.0]
    assert recorded.background_runs.values[(("model", "m"), ("outcome", "completed"), ("work", "quality_watch"))] == 1
    assert not watcher.status.fallback_active


def test_a_job_arriving_preempts_the_measurement_at_a_step_end_and_it_resumes_when_idle(tmp_path, recorded) -> None:
    async def scenario():
        group = WatchedGroup(step_s=0.01, measure_steps=200)
        engine, watcher, _ = _watched(tmp_path, group)
        await engine.submit(engine.job(_request("first"), job_id="video_a"))
        await _until(lambda: group.calls[-1] == "measure_quality" and group._busy, "the measurement to start")
        user = _request("user").model_copy(update={"pab": get_preset("none").to_dict()})  # not sampled itself
        response = await engine.submit(engine.job(user))  # arrives mid-measurement
        preempted_then = watcher.preempted
        await _until(lambda: watcher.measured == 1, "the measurement to run again and finish", timeout_s=30)
        return group, watcher, response, preempted_then

    group, watcher, response, preempted_then = asyncio.run(scenario())
    assert response.video == b"user" and preempted_then == 1 and group.stops >= 1
    assert group.calls == ["generate:first", "measure_quality", "generate:user", "measure_quality"]
    preempted = (("model", "m"), ("outcome", "preempted"), ("work", "quality_watch"))
    assert recorded.background_runs.values[preempted] == 1
    assert watcher.pending == 0


def test_below_the_floor_the_fallback_starts_with_a_log_line_a_gauge_and_probes_of_the_default(
        tmp_path, recorded, caplog) -> None:
    async def scenario():
        group = WatchedGroup(psnr=20.0)
        engine, watcher, config = _watched(tmp_path, group, floor_psnr_db=30.0, min_samples=1, window=3)
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            await engine.submit(engine.job(_request("default").model_copy(update={"pab": REFERENCE})))
            await _until(lambda: watcher.status.fallback_active, "the fallback")
        chooser = PresetChooser(JobStore.from_config(config.storage), config)
        await engine.submit(engine.job(_request("fallback").model_copy(update={"pab": PAB_246})))
        await _until(lambda: watcher.measured == 2, "the probe")
        return watcher, chooser.default_preset()

    watcher, default_now = asyncio.run(scenario())
    assert default_now == "PAB-246"
    assert "below the floor 30.00 dB; jobs that name no preset now run with PAB-246" in caplog.text
    fallback = recorded.quality_fallback.values[(("model", "m"), ("preset", "reference:latte"))]
    assert fallback == 1 and recorded.quality_floor.values[(("model", "m"),)] == 30.0
    served, probe = watcher.status.recent[-2:]
    assert (served.preset, served.probe) == ("PAB-246", False)
    assert (probe.preset, probe.probe, probe.psnr_db) == ("reference:latte", True, 19.0)  # what the default would do
    assert watcher.status.windows["reference:latte"] == [20.0, 19.0]


def test_sampling_follows_the_rate_with_a_reproducible_draw(tmp_path, recorded) -> None:
    config = _config(tmp_path, sample_rate=0.25, seed=3)

    async def count() -> int:
        watcher = QualityWatch(WatchedGroup(), JobStore.from_config(config.storage), config, CARD)
        taken = 0
        for _ in range(400):
            watcher.observe(SimpleNamespace(request=_request(), job_id=None), None)
            taken += watcher.pending
            watcher._pending.clear()
        return taken

    counts = [asyncio.run(count()) for _ in range(2)]
    assert counts[0] == counts[1], "the same seed samples the same jobs"
    assert 60 <= counts[0] <= 140  # 400 x 0.25 = 100, binomial sd ~8.7: a 4.6-sigma band
