"""The generator deployment: each replica owns a worker group in its own placement group and runs one generation
at a time on it.

Two entry points, both plain handle calls (so Serve counts them as ongoing or queued requests for autoscaling):

- `generate(GenerationRequest) -> GenerationResponse`: the typed Python API, e.g.
  `await handle.generate.remote(GenerationRequest(prompt="a cat", seed=7))`.
- `run_job(job_id)`: what the HTTP ingress dispatches; reads the job from the store, writes progress, the video
  and the final state back there, so the job survives the ingress that accepted it.

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

from pab.config import PABConfigError
from pab.runtime.request.params import GenerationParamsError
from serve_app.config import AppConfig
from serve_app.errors import InvalidRequestError, invalid
from serve_app.schemas import CONTENT_FORMATS, GenerationRequest, GenerationResponse
from serve_app.store import JobState, JobStore

from . import metrics
from .workers import JobProgress, ReplicaUnavailableError, WorkerGroup, WorkerGroupError

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "VideoGenerator"


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=1)
class VideoGeneratorDeployment:
    """Placement-group options (bundles, `STRICT_PACK`) come from `serve_app.builder.generator_options`."""

    async def __init__(self, config: AppConfig) -> None:
        began = time.perf_counter()
        self._config = config
        self._store = JobStore(config.storage.url)
        replica = serve.get_replica_context().replica_id.unique_id
        self._group = WorkerGroup(config, get_current_placement_group(), name_prefix=replica)
        self._card = await self._group.start()
        self._store.put_card(config.card_key(), self._card.model_dump_json())
        self._startup = {**self._group.startup, "init_s": round(time.perf_counter() - began, 3)}
        logger.info("pab generator replica %s ready: %s", replica, self._startup)

    def check_health(self) -> None:
        if self._group.broken is not None:
            raise RuntimeError(f"worker group broken: {self._group.broken}")

    async def describe(self) -> dict[str, Any]:
        """Where this replica's workers run: its placement group, the bundles and each worker's placement."""
        pg = self._group.placement_group
        return {
            "placement_group_id": pg.id.hex(),
            "bundles": pg.bundle_specs,
            "strategy": ray.util.placement_group_table(pg).get("strategy"),
            "workers": await self._group.placements(),
            "startup": self._startup,
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
            "model": self._card.model_dump(mode="json"),
        }

    def _resolve(self, request: GenerationRequest) -> GenerationRequest:
        try:
            return self._card.resolve(request, self._config.pab_preset, self._config.limits)
        except GenerationParamsError as exc:  # re-raised as an error that pickles: it crosses Ray to the caller
            raise invalid(str(exc), param=exc.field) from None
        except PABConfigError as exc:
            raise invalid(f"pab: {exc}", param="pab") from None

    async def generate(self, request: GenerationRequest) -> GenerationResponse:
        """Generate one video and return it (typed Python API). An invalid request raises
        `serve_app.errors.InvalidRequestError` (a `ValueError`) whose `param` names the field."""
        submitted = time.time()
        response = await self._group.run(self._resolve(request))
        timings = {**response.timings, "total_s": time.time() - submitted}
        step_seconds = timings.pop("steps_s", ())
        self._book(response.request, "completed", response.stats, timings, step_seconds)
        return response.model_copy(update={"timings": timings})

    async def run_job(self, job_id: str) -> str:
        """Run a stored job to its end and record the outcome in the store; returns the final status.

        Raises `ReplicaUnavailableError` (before touching the job) when this replica's workers are gone, so the
        caller can dispatch the job again.
        """
        record = self._store.record(job_id)
        if record is None:
            return "deleted"
        state = self._store.state(job_id)
        if state.terminal:
            return state.status
        if self._group.broken is not None:
            raise ReplicaUnavailableError(f"this generator replica is being replaced ({self._group.broken})")
        started = time.time()
        self._store.set_state(job_id, JobState(status="in_progress", started_at=started))
        progress = JobProgress(self._config.storage.url, job_id, started, self._config.storage.progress_interval_s)
        request = record.request
        try:
            response = await self._group.run(request, progress)
        except Exception as exc:
            message = str(exc) if isinstance(exc, (WorkerGroupError, ValueError)) else f"{type(exc).__name__}: {exc}"
            code = (
                "worker_failed" if isinstance(exc, WorkerGroupError)
                else "invalid_request" if isinstance(exc, InvalidRequestError)
                else "generation_failed"
            )
            logger.error("pab job %s failed: %s", job_id, message)
            self._store.set_state(
                job_id,
                JobState(
                    status="failed",
                    progress=self._store.state(job_id).progress,
                    started_at=started,
                    completed_at=int(time.time()),
                    error={"code": code, "message": message},
                ),
            )
            self._book(request, "failed", None, None, ())
            return "failed"
        if not self._store.exists(job_id):
            return "deleted"  # deleted while it ran: do not bring its folder back
        for variant in CONTENT_FORMATS:
            self._store.put_content(job_id, variant, response.content(variant))
        finished = time.time()
        timings = {
            **response.timings,
            "queue_wait_s": started - record.submitted_at,
            "total_s": finished - record.submitted_at,
        }
        step_seconds = timings.pop("steps_s", ())
        self._store.set_state(
            job_id,
            JobState(
                status="completed",
                progress=100,
                started_at=started,
                completed_at=int(finished),
                stats=response.stats,
                timings=timings,
            ),
        )
        self._book(request, "completed", response.stats, timings, step_seconds)
        return "completed"

    def _book(self, request: GenerationRequest, status: str, stats: Any, timings: Any, step_seconds: Any) -> None:
        """Export the job's PAB stats and latencies as Prometheus metrics (`deployments.metrics`)."""
        model, preset = self._card.name, (request.pab or {}).get("name", "none")
        frames = request.num_frames if status == "completed" else 0
        try:
            metrics.record_job_finished(model, preset, stats, timings, status, frames=frames)
            for seconds in step_seconds:
                metrics.observe_step_seconds(model, preset, seconds)
        except Exception:  # metrics are best effort: never fail a finished generation over them
            logger.warning("pab: could not record job metrics", exc_info=True)
