"""The ingress holds a poll of a job that is about to finish (`Dispatcher.hold_until_finished`; no Ray needed: the
hold only awaits the job's task)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from deployments.dispatch import Dispatcher
from serve_app.store import JobState


class _Held:
    """A dispatcher following `tasks`, holding polls up to `hold_ms`."""

    def __init__(self, tasks: dict, hold_ms: int) -> None:
        self.dispatcher = SimpleNamespace(_tasks=tasks)
        self.hold_s = hold_ms / 1000


def _ingress(tasks: dict, hold_ms: int = 500) -> _Held:
    return _Held(tasks, hold_ms)


async def hold_until_finished(held: _Held, job_id: str, state: JobState) -> bool:
    return await Dispatcher.hold_until_finished(held.dispatcher, job_id, state, held.hold_s)


def _running(remaining_s: float) -> JobState:
    """A job measured right now at 50% after `remaining_s` seconds: as long again to go."""
    now = time.time()
    return JobState(status="in_progress", progress=50, started_at=now - remaining_s, updated_at=now)


def test_a_poll_near_the_end_returns_when_the_job_finishes_and_never_cancels_it() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        job = asyncio.create_task(asyncio.sleep(0.05))
        finished = await hold_until_finished(_ingress({"v": job}), "v", _running(0.1))
        return finished, job.done(), job.cancelled()

    assert asyncio.run(scenario()) == (True, True, False)


def test_the_hold_gives_up_after_hold_poll_ms_and_leaves_the_job_running() -> None:
    async def scenario() -> tuple[bool, bool]:
        job = asyncio.create_task(asyncio.sleep(5))
        finished = await hold_until_finished(_ingress({"v": job}, hold_ms=50), "v", _running(0.01))
        still_running = not job.done()
        job.cancel()
        return finished, still_running

    assert asyncio.run(scenario()) == (False, True)


def test_no_hold_far_from_the_end_for_other_replicas_jobs_for_queued_jobs_or_when_disabled() -> None:
    async def scenario() -> list[bool]:
        job = asyncio.create_task(asyncio.sleep(5))
        answers = [
            await hold_until_finished(_ingress({"v": job}), "v", _running(30.0)),  # 30 s to go: answer now
            await hold_until_finished(_ingress({}), "v", _running(0.1)),  # dispatched by another ingress replica
            await hold_until_finished(_ingress({"v": job}), "v", JobState()),  # queued: nothing known yet
            await hold_until_finished(_ingress({"v": job}, hold_ms=0), "v", _running(0.1)),  # disabled
        ]
        answers.append(job.done())  # none of them waited for the job
        job.cancel()
        return answers

    assert asyncio.run(scenario()) == [False] * 5
