"""The generation engine of one generator replica: its queue, its batches and its worker group.

Jobs wait in the engine (FIFO). When the worker group is free, the engine takes the oldest job and every later
compatible job (`pab.runtime.request.request.batch_key`: same size, frames, steps, PAB schedule and guidance mode) up
to `max_batch_size`, waiting for companions while fewer are queued (until none arrived for `batch_wait_ms`, at most
3 x `batch_wait_ms`), and runs them as one
denoising loop on every rank. PAB's broadcast decision depends only on the timestep and the step counter, so the whole
batch broadcasts at the same steps: PAB batches for free. Each sample keeps its own seed and the transformer is
batch-invariant (`pab.runtime.pipelines.batching`), so a job's video is the one it would be alone.

A job leaves the engine with its response, `JobCancelled`, or the batch's error. Cancelling a queued job removes it;
cancelling a running job drops its result, and when every job of the running batch is cancelled the ranks stop
together at the next step end, freeing the replica. The engine knows nothing of the job store (`deployments.runner`
writes job state) or of HTTP.

Background work (`BackgroundWork`, e.g. `deployments.quality_watch`) sees every completed job and runs only while the
queue is empty: a job that arrives cancels it, and the engine waits for it to hand the worker group back (the ranks
stop at their next step end) before the job's batch starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable, Protocol

from pab.runtime.request.request import GenerationRequest, batch_key
from serve_app.schemas import GenerationResponse

from . import metrics
from .workers import BatchStopped, WorkerGroup

logger = logging.getLogger("ray.serve")

ProgressCallback = Callable[[int, int], Awaitable[None]]
MAX_WAITS = 3
"""An idle engine gathers a batch for at most this many `batch_wait_ms` (while companions keep arriving)."""


class BackgroundWork(Protocol):
    """Work of the lowest priority on the engine's worker group."""

    def observe(self, job: "EngineJob", response: GenerationResponse) -> None:
        """Called with each job that completed (not cancelled)."""

    async def run_idle(self) -> None:
        """Run while no job waits; cancelled when one arrives, it must stop its use of the group before it returns."""


class JobCancelled(RuntimeError):
    """The job was cancelled (DELETE, or its caller went away) before it finished."""


@dataclass(eq=False)
class EngineJob:
    r"""
    One request in the engine.

    Args:
        request: The resolved request.
        key: Its batch key; only jobs with equal keys share a batch.
        job_id: The stored job's id, or None for a Python handle call.
        on_progress: Awaited with (finished steps, total steps) while the job's batch runs.
    """

    request: GenerationRequest
    key: Hashable
    job_id: str | None = None
    on_progress: ProgressCallback | None = None
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    batch_size: int = 0
    cancelled: bool = False
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GenerationEngine:
    r"""
    Args:
        group: The replica's started worker group.
        model: The served model's name (metrics label).
        per_sample_guidance: Whether requests that differ only in guidance scale may share a batch.
        max_batch_size: Most jobs in one denoising loop.
        batch_wait_ms: How long an idle engine waits for companions of a lone compatible job.
        progress_poll_s: How often rank 0's step count is read while a batch runs.
        background: Work to run while the queue is empty (`BackgroundWork`), or None.
    """

    def __init__(self, group: WorkerGroup, *, model: str, per_sample_guidance: bool, max_batch_size: int,
                 batch_wait_ms: int, progress_poll_s: float, background: BackgroundWork | None = None) -> None:
        self._group, self._model = group, model
        self._per_sample_guidance = per_sample_guidance
        self._max_batch, self._wait_s, self._poll_s = max_batch_size, batch_wait_ms / 1000, progress_poll_s
        self._queue: list[EngineJob] = []
        self._running: list[EngineJob] = []
        self._arrived = asyncio.Event()
        self.batches_run = 0
        self.batches_stopped = 0
        self.jobs_cancelled = 0
        self._background = background
        self._loop = asyncio.get_running_loop().create_task(self._serve())

    # ---- callers ---------------------------------------------------------------------------------------------
    def job(self, request: GenerationRequest, job_id: str | None = None,
            on_progress: ProgressCallback | None = None) -> EngineJob:
        """Wrap a resolved request for `submit`."""
        key = batch_key(request, per_sample_guidance=self._per_sample_guidance)
        return EngineJob(request=request, key=key, job_id=job_id, on_progress=on_progress)

    async def submit(self, job: EngineJob) -> GenerationResponse:
        """Queue the job and wait for its response; a cancelled caller cancels the job."""
        self._queue.append(job)
        self._arrived.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            await self.cancel(job)
            raise

    async def cancel(self, job: EngineJob) -> None:
        """Remove a queued job, or drop a running one (and stop its batch when no job of it is left).

        Idempotent: a deleted running job is cancelled twice, by its ingress (the cancelled handle call) and by its
        runner (its next progress write finds the record gone); it counts once and stops its batch once.
        """
        if job.future.done() or job.cancelled:
            return
        job.cancelled = True
        self.jobs_cancelled += 1
        if job in self._queue:
            self._queue.remove(job)
            job.future.set_exception(JobCancelled("cancelled while queued"))
        elif job in self._running and all(j.cancelled for j in self._running):
            await self._group.stop()

    @property
    def depth(self) -> tuple[int, int]:
        """(queued, running) jobs."""
        return len(self._queue), len(self._running)

    # ---- the loop --------------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        while True:
            if not self._queue:
                await self._idle()
            await self._gather_companions()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _idle(self) -> None:
        """Wait for a job, running the background work meanwhile; it is cancelled, and awaited, when one arrives."""
        work = asyncio.create_task(self._background.run_idle()) if self._background is not None else None
        try:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
        finally:
            if work is not None:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)

    async def _gather_companions(self) -> None:
        """While the oldest job has fewer companions than a full batch, wait for more: until none has arrived for
        `batch_wait_ms`, and at most `MAX_WAITS` x `batch_wait_ms` in all (a burst of submissions reaches the
        engine spread over a few hundred milliseconds; a lone job starts after `batch_wait_ms`)."""
        start = time.monotonic()
        last = start
        while self._queue and len(self._compatible()) < self._max_batch:
            remaining = min(last + self._wait_s, start + MAX_WAITS * self._wait_s) - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return
            last = time.monotonic()

    def _compatible(self) -> list[EngineJob]:
        head = self._queue[0]
        return [j for j in self._queue if j.key == head.key][: self._max_batch]

    def _take_batch(self) -> list[EngineJob]:
        if not self._queue:
            return []
        batch = self._compatible()
        for job in batch:
            self._queue.remove(job)
        return batch

    async def _run(self, batch: list[EngineJob]) -> None:
        self._running = batch
        started = time.time()
        for job in batch:
            job.started_at, job.batch_size = started, len(batch)
        metrics.observe_batch(self._model, len(batch))
        self.batches_run += 1
        report = self._fan_out(batch)
        try:
            await report(0, batch[0].request.num_inference_steps)  # the batch started: its jobs are in progress
            responses = await self._group.run([j.request for j in batch], report, self._poll_s)
        except BatchStopped:
            self.batches_stopped += 1
            self._settle(batch, None, JobCancelled("cancelled while running: its batch stopped at a step end"))
        except BaseException as exc:  # noqa: BLE001 - every job of the batch gets the batch's error
            self._settle(batch, None, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self._settle(batch, responses, None)
            for job, response in zip(batch, responses):
                if self._background is not None and not job.cancelled:
                    self._background.observe(job, response)
        finally:
            self._running = []

    def _fan_out(self, batch: list[EngineJob]) -> ProgressCallback:
        async def report(done: int, total: int) -> None:
            for job in batch:
                if job.on_progress is not None and not job.cancelled:
                    try:
                        await job.on_progress(done, total)
                    except Exception:  # progress is best effort
                        logger.warning("pab: progress report failed for %s", job.job_id, exc_info=True)
        return report

    @staticmethod
    def _settle(batch: list[EngineJob], responses: list[GenerationResponse] | None, error: BaseException | None) -> None:
        for i, job in enumerate(batch):
            if job.future.done():
                continue
            if job.cancelled:
                job.future.set_exception(JobCancelled("cancelled while running"))
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(responses[i])
