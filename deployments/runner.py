"""Running stored jobs: the generator replica's side of a job, and the only writer of its state once it is claimed.

`JobRunner.run(job_id)` claims the next attempt of the job in the store (an exclusive create, so no attempt runs
twice), reads the request with its pixels (`JobStore.runnable`: the only read of a job's pixel files; a missing or
mismatched one fails the job with `store_corrupt`), queues it in the engine, writes `in_progress` when its batch
starts and progress while it runs, renews its lease all along, and then writes the content and the outcome:
`completed`, `failed` (a generation error, or the last attempt lost to infrastructure) or nothing at all for a
deleted (cancelled) job. A job lost to a dead worker goes back to `queued` and `ReplicaUnavailableError` tells the
dispatcher to run it again elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from serve_app.config import AppConfig
from serve_app.schemas import CONTENT_FORMATS, GenerationResponse
from serve_app.store import TERMINAL, BadRecord, JobRecord, JobState, JobStore, ProgressThrottle, corrupt_error

from . import metrics
from .engine import EngineJob, GenerationEngine, JobCancelled
from .workers import ReplicaUnavailableError, WorkerGroupError

logger = logging.getLogger("ray.serve")

RUNNING_ELSEWHERE = "running_elsewhere"
"""`run`'s answer for a job another live runner holds (the dispatcher then waits for it in the store)."""


class JobWrites:
    """The state of one claimed job, written one update at a time (in order) with the runner's lease renewed."""

    def __init__(self, store: JobStore, job_id: str, state: JobState, lease_s: float) -> None:
        self._store, self._job_id, self.state, self._lease_s = store, job_id, state, lease_s
        self._lock = asyncio.Lock()
        self.deleted = False

    async def write(self, **update: Any) -> bool:
        """Apply `update` and write the state; False (and nothing more is ever written) once the job is deleted."""
        async with self._lock:
            if self.deleted:
                return False
            if "lease_until" not in update and update.get("status", self.state.status) not in TERMINAL:
                update["lease_until"] = time.time() + self._lease_s
            self.state = self.state.model_copy(update=update)
            self.deleted = not await asyncio.to_thread(self._store.set_state, self._job_id, self.state)
            return not self.deleted

    async def heartbeat(self) -> None:
        """Renew the lease every third of it, so a live runner keeps its job however long a step or a queue is."""
        while await self.write():
            await asyncio.sleep(self._lease_s / 3)


class JobRunner:
    r"""
    Args:
        store: The job store.
        engine: The replica's engine.
        config: The app config (`engine.max_attempts`, `engine.lease_s`, `storage.progress_interval_s`).
        runner_id: This replica's id, recorded on the jobs it runs.
        model: The served model name (metrics label).
    """

    def __init__(self, store: JobStore, engine: GenerationEngine, config: AppConfig, runner_id: str, model: str) -> None:
        self._store, self._engine, self._config = store, engine, config
        self._id, self._model = runner_id, model

    async def run(self, job_id: str, take_over: bool = False) -> str:
        """Run the job to its end (or hand it back); returns the final status. `take_over`: the caller saw the
        previous runner die, so its lease need not run out first."""
        record = await asyncio.to_thread(self._store.record, job_id)
        if record is None:
            return "deleted"
        state = await asyncio.to_thread(self._store.state, job_id)
        if state.terminal:
            return state.status
        held = state.runner not in (None, self._id) and (state.lease_until or 0) > time.time()
        if held and not take_over:
            return RUNNING_ELSEWHERE
        attempt = state.attempt + 1
        if not await asyncio.to_thread(self._store.claim, job_id, attempt):
            return RUNNING_ELSEWHERE
        writes = JobWrites(self._store, job_id, JobState(attempt=attempt, runner=self._id), self._config.engine.lease_s)
        if attempt > 1:
            metrics.record_rerun(self._model, "worker_lost")
        heartbeat = asyncio.create_task(writes.heartbeat())
        try:
            return await self._run_claimed(record, writes)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _run_claimed(self, record: JobRecord, writes: JobWrites) -> str:
        request = await asyncio.to_thread(self._store.runnable, record)  # the one read of the job's pixels
        if isinstance(request, BadRecord):  # fails this job only: nothing else reads these files
            error = corrupt_error(request, "so the job cannot run")
            return await self._finish(record, writes, "failed", error=(error["code"], error["message"]))
        job = self._engine.job(request, record.id)
        throttle = ProgressThrottle(self._config.storage.progress_interval_s)

        async def progress(done: int, total: int) -> None:
            update = {"status": "in_progress", "started_at": job.started_at} if done == 0 else {}
            percent = throttle(done, total) if done else None
            if percent is not None:
                update["progress"] = percent
            if update and not await writes.write(**update):
                await self._engine.cancel(job)  # deleted while it ran: stop writing, free its batch slot

        job.on_progress = progress
        try:
            response = await self._engine.submit(job)
        except JobCancelled:
            return self._cancelled(record)
        except asyncio.CancelledError:
            self._cancelled(record)
            raise
        except (WorkerGroupError, ReplicaUnavailableError) as exc:
            return await self._lost(record, writes, exc)
        except Exception as exc:  # noqa: BLE001 - a generation error fails this job only
            return await self._finish(record, writes, "failed", error=("generation_failed", f"{type(exc).__name__}: {exc}"))
        return await self._complete(record, writes, response, job)

    async def _complete(self, record: JobRecord, writes: JobWrites, response: GenerationResponse, job: EngineJob) -> str:
        """Store the content, then `completed` with the stats (unless the job was deleted or taken over)."""
        job_id = record.id
        if not await asyncio.to_thread(self._owns, job_id, writes.state.attempt):
            return "deleted"
        for variant in CONTENT_FORMATS:
            await asyncio.to_thread(self._store.put_content, job_id, variant, response.content(variant))
        if response.frames:
            await asyncio.to_thread(self._store.put_frames, job_id, response.frames)
        stats = response.stats.with_timings(queue_wait_s=(job.started_at or job.queued_at) - record.submitted_at,
                                            total_s=time.time() - record.submitted_at)
        return await self._finish(record, writes, "completed", stats=stats, frames=record.request.num_frames)

    async def _lost(self, record: JobRecord, writes: JobWrites, exc: BaseException) -> str:
        """Infrastructure lost the run: back to the queue for another attempt, or failed after the last one."""
        attempt = writes.state.attempt
        if attempt < self._config.engine.max_attempts:
            logger.warning("pab job %s: attempt %d lost (%s); it will run again", record.id, attempt, exc)
            await writes.write(status="queued", progress=0, lease_until=None)
            raise ReplicaUnavailableError(f"attempt {attempt} of job {record.id} was lost: {exc}")
        message = (f"failed after {attempt} attempts, each lost to the infrastructure (last: {exc}); "
                   "the request itself is fine: resubmit it")
        return await self._finish(record, writes, "failed", error=("worker_failed", message))

    def _cancelled(self, record: JobRecord) -> str:
        logger.info("pab job %s cancelled", record.id)
        metrics.record_job_finished(self._model, record.request.preset_name, None, "cancelled")
        return "cancelled"

    async def _finish(self, record: JobRecord, writes: JobWrites, status: str, *, stats: Any = None,
                      error: tuple[str, str] | None = None, frames: int = 0) -> str:
        if error:
            logger.error("pab job %s %s: %s", record.id, status, error[1])
        update: dict[str, Any] = {"status": status, "completed_at": int(time.time()), "lease_until": None,
                                  "stats": stats, "error": {"code": error[0], "message": error[1]} if error else None}
        if status == "completed":
            update["progress"] = 100
        if not await writes.write(**update):
            return "deleted"
        metrics.record_job_finished(self._model, record.request.preset_name, stats, status, frames=frames)
        return status

    def _owns(self, job_id: str, attempt: int) -> bool:
        """Still this runner's job: not deleted, and no later attempt was claimed meanwhile."""
        return self._store.exists(job_id) and not self._store.claimed(job_id, attempt + 1)
