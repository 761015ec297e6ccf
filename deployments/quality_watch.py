"""The quality watch of one generator replica: what PAB costs in quality on live traffic, measured while idle.

The engine (`deployments.engine`) hands the watch every completed job (`observe`) and runs `run_idle` only while
its queue is empty. A sampled PAB job (`quality_watch.sample_rate`) is re-run with PAB off on the replica's worker
group (`GenerationWorker.measure_quality`, `deployments.quality_probe`), and the served video is scored against
the full model's: PSNR and SSIM of the raw frames, as `bench/quality.py` computes them. A job that arrives cancels
the re-run, which then stops the group at its next step end and keeps the sample for the next idle spell: a user
job waits for the rest of one step and the stop's round trip (`bench/quality_watch.py`), and the watch never enters
Serve's queues or autoscaling.

Samples are pooled in the job store per preset (`serve_app.quality`, shared by every replica of the deployment).
When the rolling median of the default preset falls below `floor_psnr_db`, ingress replicas resolve jobs that name no
preset with `fallback_preset`; while that lasts, each sampled job is also probed with the default preset (one more
generation), so the median can recover and the fallback end. Every change is logged; metrics in
`deployments.metrics` (`ray_pab_quality_*`, `ray_pab_background_*`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from pab.runtime.request.card import ModelCard
from pab.runtime.request.request import GenerationRequest
from pab.runtime.request.resolve import resolve_pab
from serve_app.config import AppConfig
from serve_app.quality import QualitySample, QualityStatus, read_status, status_key
from serve_app.schemas import GenerationResponse
from serve_app.store import JobStore

from . import metrics
from .quality_probe import runs_pab
from .workers import WorkerGroup

logger = logging.getLogger("ray.serve")

WORK = "quality_watch"
PENDING_SAMPLES = 8
"""Sampled jobs waiting for an idle spell; the oldest is dropped past this (fresh traffic matters more)."""
PUBLISH_PERIOD_S = 5.0
"""How often the gauges are set again (Ray exports a gauge only while it is being set) from the pooled state."""
STOP_POLL_S = 0.05


@dataclass(frozen=True)
class _Sample:
    job_id: str | None
    request: GenerationRequest
    probe_pab: dict[str, Any] | None


class QualityWatch:
    r"""
    Args:
        group: The replica's worker group (shared with the engine, which runs this only while idle).
        store: The job store, where the samples of every replica are pooled.
        config: The app config (`quality_watch`, `pab_preset`).
        card: The served model's card (its name and PAB adapter).
    """

    def __init__(self, group: WorkerGroup, store: JobStore, config: AppConfig, card: ModelCard) -> None:
        self._group, self._store, self._watch = group, store, config.quality_watch
        self._model, self._key = card.name, status_key(config)
        self._default = resolve_pab(config.pab_preset, card.adapter)
        self._rng = random.Random(self._watch.seed)
        self._pending: deque[_Sample] = deque(maxlen=PENDING_SAMPLES)
        self._ready = asyncio.Event()
        self._status = self._fresh_status(card)
        self.measured = self.preempted = 0
        self.measuring = False
        self._publisher = asyncio.get_running_loop().create_task(self._publish_periodically())

    def _fresh_status(self, card: ModelCard) -> QualityStatus:
        fallback = resolve_pab(self._watch.fallback_preset, card.adapter)
        return QualityStatus(default_preset=self._default.name if self._default else "none",
                             fallback_preset=fallback.name if fallback else "none",
                             floor_psnr_db=self._watch.floor_psnr_db)

    @property
    def status(self) -> QualityStatus:
        return self._status

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ---- the engine's side ----------------------------------------------------------------------------------
    def observe(self, job: Any, response: GenerationResponse) -> None:
        """Maybe sample a completed job (never raises: the engine calls it for every job)."""
        try:
            request = job.request
            default = self._default.to_dict() if self._default is not None else None
            probe = default if self._status.fallback_active and request.pab != default else None
            if not (runs_pab(request) or probe) or self._rng.random() >= self._watch.sample_rate:
                return
            self._pending.append(_Sample(job.job_id, request, probe))
            self._ready.set()
        except Exception:  # noqa: BLE001 - a side channel must not fail the engine
            logger.warning("pab quality watch: could not sample job %s", getattr(job, "job_id", None), exc_info=True)

    async def run_idle(self) -> None:
        """Measure pending samples until cancelled (a job arrived); a preempted sample stays first in line."""
        while True:
            while not self._pending:
                self._ready.clear()
                await self._ready.wait()
            sample = self._pending[0]
            scores = await self._measure(sample)
            if self._pending and self._pending[0] is sample:
                self._pending.popleft()
            if scores is not None:
                try:
                    await self._record(sample, scores)
                except Exception:  # noqa: BLE001 - e.g. the store unreachable: this sample is lost, not the watch
                    logger.warning("pab quality watch: could not record the sample of %s", sample.job_id, exc_info=True)

    # ---- one measurement ------------------------------------------------------------------------------------
    async def _measure(self, sample: _Sample) -> dict[str, Any] | None:
        """Run the measurement on the group; on cancellation stop it at a step end, wait for that, then re-raise."""
        started = time.perf_counter()
        run = asyncio.ensure_future(self._group.run([sample.request], call="measure_quality", args=(sample.probe_pab,)))
        self.measuring = True
        try:
            scores = await asyncio.shield(run)
        except asyncio.CancelledError:
            await self._stop(run)
            self.preempted += 1
            metrics.record_background(self._model, WORK, "preempted", time.perf_counter() - started)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed measurement drops its sample only
            logger.warning("pab quality watch: measuring job %s failed: %s", sample.job_id, exc)
            metrics.record_background(self._model, WORK, "failed", time.perf_counter() - started)
            return None
        finally:
            self.measuring = False
        metrics.record_background(self._model, WORK, "completed", time.perf_counter() - started)
        return scores

    async def _stop(self, run: asyncio.Future) -> None:
        """Ask the ranks to stop until the run has ended (a stop sent before the run started would be missed)."""
        while not run.done():
            await self._group.stop()
            await asyncio.wait({run}, timeout=STOP_POLL_S)
        if not run.cancelled():
            run.exception()  # retrieved: the BatchStopped it ended with is expected

    async def _record(self, sample: _Sample, scores: dict[str, Any]) -> None:
        found = []
        if scores.get("served") is not None:
            found.append(QualitySample.of(sample.job_id, sample.request.pab["name"], **scores["served"]))
        if scores.get("probe") is not None:
            found.append(QualitySample.of(sample.job_id, self._status.default_preset, **scores["probe"], probe=True))
        for s in found:
            metrics.record_quality_sample(self._model, s.preset, s.psnr_db, s.ssim)
        status = await asyncio.to_thread(self._add, found)
        self._adopt(status)
        self.measured += 1

    def _add(self, samples: list[QualitySample]) -> QualityStatus:
        """Read the pooled state, add the samples, write it back (the store's whole-file writes keep it readable)."""
        status = self._current()
        for s in samples:
            status = status.add(s, self._watch.window, self._watch.min_samples)
        self._store.put_card(self._key, status.model_dump_json())
        return status

    def _current(self) -> QualityStatus:
        stored = read_status(self._store, self._key)
        return stored if stored is not None else self._status

    # ---- state and gauges -----------------------------------------------------------------------------------
    def _adopt(self, status: QualityStatus) -> None:
        """Take the pooled state; log a change of the fallback; set the gauges."""
        if status.fallback_active != self._status.fallback_active:
            median = status.median(status.default_preset)
            if status.fallback_active:
                logger.warning("pab quality watch: %s median PSNR %.2f dB is below the floor %.2f dB; jobs that name "
                               "no preset now run with %s", status.default_preset, median, status.floor_psnr_db,
                               status.fallback_preset)
            else:
                logger.warning("pab quality watch: %s median PSNR %.2f dB is back at or above the floor %.2f dB; "
                               "jobs that name no preset run with it again", status.default_preset, median,
                               status.floor_psnr_db)
        self._status = status
        medians = {p: status.median(p) for p in status.windows}
        metrics.set_quality_status(self._model, status.default_preset, status.floor_psnr_db, status.fallback_active,
                                   {p: m for p, m in medians.items() if m is not None})

    async def _publish_periodically(self) -> None:
        while True:
            try:
                self._adopt(await asyncio.to_thread(self._current))
            except Exception:  # noqa: BLE001 - keep publishing
                logger.warning("pab quality watch: could not read the pooled state", exc_info=True)
            await asyncio.sleep(PUBLISH_PERIOD_S)

    def describe(self) -> dict[str, Any]:
        """For the replica's `describe()`: counts and the state."""
        return {"measured": self.measured, "preempted": self.preempted, "pending": self.pending,
                "measuring": self.measuring, "status": self._status.model_dump(mode="json")}
