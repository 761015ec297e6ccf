"""The ingress's side of accepted jobs: hand each to a generator replica and follow it to its end.

A job is dispatched as one handle call (`run_job`), so Serve's autoscaler sees it as an ongoing or queued request.
When the replica running it is lost, the job is dispatched again: to take over its attempt when the replica died
mid-run, or as it is when the replica was unavailable before it started; the runner counts attempts in the store and
fails a job only after `engine.max_attempts`. A job another live runner holds (two ingress replicas resuming the same
store) is waited for in the store. At start, every unfinished job in the store is dispatched again.

The dispatcher writes a job's state only when no live runner can: its runner died on its last attempt, or no
replica ever took it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serve_app.config import AppConfig
from serve_app.store import JobState, JobStore

from . import metrics
from .runner import RUNNING_ELSEWHERE
from .workers import ReplicaUnavailableError

logger = logging.getLogger("ray.serve")

DISPATCH_RETRIES = 20
"""How often a job is dispatched again while no replica takes it (each time after a growing pause, at most 5 s)."""
QUEUE_DEPTH_PERIOD_S = 5.0


class Dispatcher:
    def __init__(self, generator: DeploymentHandle, store: JobStore, config: AppConfig) -> None:
        self._generator, self._store, self._config = generator, store, config
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tenants: dict[str, str | None] = {}
        self._responses: dict[str, DeploymentResponse] = {}
        self.admitting = 0
        """Jobs past the queue check whose record is still being written (they hold their queue slot)."""

    @property
    def in_flight(self) -> int:
        return len(self._tasks) + self.admitting

    def start(self) -> list[asyncio.Task[None]]:
        """The background work of an ingress replica: resume, then report queue depth periodically."""
        return [asyncio.create_task(self.resume()), asyncio.create_task(self.report_queue_depth())]

    def in_flight_of(self, tenant: str | None) -> int:
        """The jobs of `tenant` this replica follows (waiting or running)."""
        return sum(t == tenant for t in self._tenants.values())

    def dispatch(self, job_id: str, tenant: str | None = None) -> None:
        if job_id not in self._tasks:
            self._tenants[job_id] = tenant
            self._tasks[job_id] = asyncio.create_task(self._follow(job_id))

    def cancel(self, job_id: str) -> None:
        """Cancel the job's handle call (the replica then drops the job from its queue or its batch)."""
        response = self._responses.get(job_id)
        if response is not None:
            response.cancel()

    async def hold_until_finished(self, job_id: str, state: JobState, hold_s: float) -> bool:
        """Wait (up to `hold_s`) for a job this replica follows that is about to finish; True if it finished.

        A client that polls at the hint would otherwise learn of the end up to one poll interval late, which on a
        short generation is a noticeable share of its latency. Only this replica knows when its dispatch returns,
        so jobs dispatched by another ingress replica are answered at once. Never cancels the job.
        """
        task = self._tasks.get(job_id)
        remaining = state.remaining_s(time.time())
        if task is None or hold_s <= 0 or remaining is None or remaining > hold_s:
            return False
        done, _ = await asyncio.wait({task}, timeout=hold_s)
        return bool(done)

    # ---- one job ---------------------------------------------------------------------------------------------
    async def _follow(self, job_id: str) -> None:
        take_over, unavailable = False, 0
        try:
            while unavailable <= DISPATCH_RETRIES:
                response = self._generator.run_job.remote(job_id, take_over)
                self._responses[job_id] = response
                try:
                    status = await response
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a lost replica: the runner records every failure of its own
                    state = await asyncio.to_thread(self._store.state, job_id)
                    if state.terminal or not await asyncio.to_thread(self._store.exists, job_id):
                        return
                    died = not isinstance(exc, ReplicaUnavailableError)  # mid-call: its claim is stale now
                    if died and state.attempt >= self._config.engine.max_attempts:
                        return self._fail(job_id, state, f"its last attempt ({state.attempt}) was lost: {_line(exc)}")
                    unavailable += not died
                    take_over = died
                    logger.warning("pab job %s: generator lost (%s); dispatching again", job_id, _line(exc))
                    await asyncio.sleep(min(0.5 * 2 ** min(unavailable, 4), 5.0))
                    continue
                if status != RUNNING_ELSEWHERE or not await self._await_elsewhere(job_id):
                    return
                take_over = False
            self._fail(job_id, await asyncio.to_thread(self._store.state, job_id), "no generator replica took it")
        except Exception:  # noqa: BLE001 - a follower must never die silently
            logger.exception("pab job %s: dispatch failed", job_id)
        finally:
            self._tasks.pop(job_id, None)
            self._tenants.pop(job_id, None)
            self._responses.pop(job_id, None)

    async def _await_elsewhere(self, job_id: str) -> bool:
        """Wait while another live runner holds the job; True when its lease ran out unfinished (dispatch again)."""
        while True:
            await asyncio.sleep(min(self._config.engine.lease_s / 3, 2.0))
            state = await asyncio.to_thread(self._store.state, job_id)
            if state.terminal or not await asyncio.to_thread(self._store.exists, job_id):
                return False
            if state.status != "in_progress" or (state.lease_until or 0) < time.time():
                return True

    def _fail(self, job_id: str, state: JobState, why: str) -> None:
        message = f"the job could not be run: {why}; the request itself is fine: resubmit it"
        logger.error("pab job %s failed: %s", job_id, message)
        failed = state.model_copy(update={"status": "failed", "completed_at": int(time.time()), "lease_until": None,
                                          "error": {"code": "generator_lost", "message": message}})
        self._store.set_state(job_id, failed)
        record = self._store.record(job_id)
        preset = record.request.preset_name if record else "none"
        metrics.record_job_finished(self._config.model_name, preset, None, "failed")

    # ---- every job -------------------------------------------------------------------------------------------
    async def resume(self) -> None:
        """Dispatch the jobs the store shows unfinished: their ingress replica may be gone."""
        try:
            pending = await asyncio.to_thread(self._unfinished)
        except Exception:
            logger.exception("pab: could not list unfinished jobs to resume")
            return
        for job_id, tenant in pending:
            self.dispatch(job_id, tenant)
        if pending:
            logger.info("pab: dispatched %d unfinished job(s) again", len(pending))

    def _unfinished(self) -> list[tuple[str, str | None]]:
        jobs = [(i, self._store.record(i)) for i in self._store.unfinished_ids()]
        return [(i, record.tenant) for i, record in jobs if record is not None]

    async def report_queue_depth(self) -> None:
        """Publish how many of this replica's jobs wait for a generator and how many run."""
        while True:
            try:
                states = [await asyncio.to_thread(self._store.state, i) for i in list(self._tasks)]
                running = sum(s.status == "in_progress" for s in states)
                metrics.set_queue_depth(len(states) - running, running)
            except Exception:
                logger.warning("pab: could not report queue depth", exc_info=True)
            await asyncio.sleep(QUEUE_DEPTH_PERIOD_S)


def _line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
