"""The generator deployment: each replica owns a worker group in its own placement group and a generation engine
(`deployments.engine`) that batches compatible jobs onto it.

Entry points, all plain handle calls (so Serve counts every job waiting in or running on the engine as an ongoing
request for autoscaling):

- `generate(GenerationRequest) -> GenerationResponse`: the typed Python API, e.g.
  `await handle.generate.remote(GenerationRequest(prompt="a red square moving left", seed=7))`; resolved here with
  the same resolver as HTTP requests, then run through the same engine.
- `run_job(job_id, take_over)`: what the HTTP ingress dispatches; `deployments.runner` claims the stored job, runs it
  and writes its progress, content and outcome to the store, so the job survives the ingress that accepted it.

`check_health` fails once a worker has died, so Serve replaces the replica (and its placement group with it).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
from ray import serve
from ray.util import get_current_placement_group

from pab.runtime.request.params import RequestError
from pab.runtime.request.resolve import resolve
from serve_app.config import AppConfig
from serve_app.errors import from_request_error
from serve_app.quality import PresetChooser
from serve_app.schemas import GenerationRequest, GenerationResponse
from serve_app.store import JobStore

from . import metrics
from .engine import GenerationEngine
from .quality_watch import QualityWatch
from .runner import JobRunner
from .workers import ReplicaUnavailableError, WorkerGroup

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "VideoGenerator"


@serve.deployment(name=DEPLOYMENT_NAME)
class VideoGeneratorDeployment:
    """Placement-group options (bundles, `STRICT_PACK`) come from `serve_app.entrypoints.builder.generator_options`."""

    async def __init__(self, config: AppConfig) -> None:
        began = time.perf_counter()
        self._config = config
        self._store = JobStore.from_config(config.storage)
        replica = serve.get_replica_context().replica_id.unique_id
        self._group = WorkerGroup(config, get_current_placement_group(), name_prefix=replica)
        self._card = await self._group.start()
        engine = config.engine
        max_batch = engine.max_batch_size if self._card.batch_variance is None else 1
        if max_batch < engine.max_batch_size:
            logger.info("pab: %s runs one job at a time: %s", self._card.name, self._card.batch_variance)
        watching = config.quality_watch.enabled and self._card.adapter is not None
        self._watch = QualityWatch(self._group, self._store, config, self._card) if watching else None
        self._engine = GenerationEngine(
            self._group, model=self._card.name, per_sample_guidance=self._card.per_sample_guidance,
            max_batch_size=max_batch, batch_wait_ms=engine.batch_wait_ms if max_batch > 1 else 0,
            progress_poll_s=max(config.storage.progress_interval_s, 0.05), background=self._watch,
        )
        self._presets = PresetChooser(self._store, config)  # the quality watch's fallback, as the ingress sees it
        self._runner = JobRunner(self._store, self._engine, config, replica, self._card.name)
        self._store.put_card(config.card_key(), self._card.model_dump_json())
        self._startup = {**self._group.startup, "init_s": round(time.perf_counter() - began, 3)}
        logger.info("pab generator replica %s ready: %s", replica, self._startup)

    def check_health(self) -> None:
        if self._group.broken is not None:
            raise RuntimeError(f"worker group broken: {self._group.broken}")

    async def describe(self) -> dict[str, Any]:
        """Where this replica's workers run: its placement group, the bundles and each worker's placement."""
        pg = self._group.placement_group
        queued, running = self._engine.depth
        return {
            "placement_group_id": pg.id.hex(),
            "bundles": pg.bundle_specs,
            "strategy": ray.util.placement_group_table(pg).get("strategy"),
            "workers": await self._group.placements(),
            "worker_names": self._group.names,
            "startup": self._startup,
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
            "model": self._card.model_dump(mode="json"),
            "engine": {"queued": queued, "running": running, "batches_run": self._engine.batches_run,
                       "batches_stopped": self._engine.batches_stopped, "jobs_cancelled": self._engine.jobs_cancelled},
            "quality_watch": self._watch.describe() if self._watch is not None else None,
        }

    async def generate(self, request: GenerationRequest) -> GenerationResponse:
        """Generate one video and return it (typed Python API). An invalid request raises
        `serve_app.errors.InvalidRequestError` (a `ValueError`) whose `param` names the field."""
        submitted = time.time()
        try:
            resolved = resolve(request, self._card, default_pab=self._presets.default_preset(),
                               limits=self._config.limits)
        except RequestError as exc:  # re-raised as an error that pickles with its fields: it crosses Ray
            raise from_request_error(exc, api_names=False) from None
        job = self._engine.job(resolved)
        response = await self._engine.submit(job)
        stats = response.stats.with_timings(queue_wait_s=(job.started_at or submitted) - submitted,
                                            total_s=time.time() - submitted)
        metrics.record_job_finished(self._card.name, resolved.preset_name, stats, "completed", frames=resolved.num_frames)
        return response.model_copy(update={"stats": stats})

    async def run_job(self, job_id: str, take_over: bool = False) -> str:
        """Run a stored job to its end and record the outcome in the store; returns the final status.

        Raises `ReplicaUnavailableError` when this replica cannot run it (its workers are gone, before or during
        the run), so the caller dispatches the job again; the job then runs again, up to `engine.max_attempts`.
        """
        if self._group.broken is not None:
            raise ReplicaUnavailableError(f"this generator replica is being replaced ({self._group.broken})")
        return await self._runner.run(job_id, take_over=take_over)
