"""The generation engine's scheduling without Ray: batches of compatible jobs (FIFO, bounded, with a short wait for
companions), cancel of queued and running jobs, and one error for every job of a failed batch. A stand-in worker
group records each batch it is handed."""

from __future__ import annotations

import asyncio

import pytest

from deployments.engine import GenerationEngine, JobCancelled
from deployments.workers import BatchStopped, WorkerGroupError
from pab.runtime.request.request import GenerationRequest
from pab.runtime.stats import GenerationStats
from serve_app.schemas import GenerationResponse


def _request(prompt: str = "a red square moving left", size: int = 16, guidance: float = 3.0, seed: int = 0) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, model="m", num_frames=4, height=size, width=size, num_inference_steps=4,
                             guidance_scale=guidance, seed=seed, fps=4, pab={"name": "PAB-246"})


class FakeGroup:
    """Runs a batch for `step_s` x steps, reporting progress; `stop()` ends it at the next step like the ranks do."""

    def __init__(self, step_s: float = 0.01, fail: BaseException | None = None) -> None:
        self.batches: list[list[str]] = []
        self.step_s, self.fail = step_s, fail
        self._stop = False

    async def run(self, batch, on_progress=None, poll_s=0.0):
        self.batches.append([r.prompt for r in batch])
        self._stop = False
        for step in range(batch[0].num_inference_steps):
            await asyncio.sleep(self.step_s)
            if self._stop:
                raise BatchStopped("stopped")
            if on_progress is not None:
                await on_progress(step + 1, batch[0].num_inference_steps)
        if self.fail is not None:
            raise self.fail
        stats = GenerationStats(batch_size=len(batch))
        return [GenerationResponse(model="m", video=r.prompt.encode(), thumbnail=b"", spritesheet=b"", request=r,
                                   stats=stats) for r in batch]

    async def stop(self) -> None:
        self._stop = True


def _engine(group: FakeGroup, max_batch: int = 3, wait_ms: int = 50, per_sample_guidance: bool = False) -> GenerationEngine:
    return GenerationEngine(group, model="m", per_sample_guidance=per_sample_guidance, max_batch_size=max_batch,
                            batch_wait_ms=wait_ms, progress_poll_s=0.0)


def test_compatible_jobs_share_batches_up_to_the_limit_in_fifo_order() -> None:
    async def scenario() -> tuple[list[list[str]], list[int]]:
        group = FakeGroup()
        engine = _engine(group, max_batch=3)
        jobs = [engine.job(_request(prompt=f"p{i}")) for i in range(7)]
        responses = await asyncio.gather(*(engine.submit(j) for j in jobs))
        return group.batches, [r.stats.batch_size for r in responses]

    batches, sizes = asyncio.run(scenario())
    assert batches == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    assert sizes == [3, 3, 3, 3, 3, 3, 1]


def test_incompatible_jobs_never_share_a_batch() -> None:
    async def scenario() -> list[list[str]]:
        group = FakeGroup()
        engine = _engine(group, max_batch=4)
        requests = [_request("a16", 16), _request("b32", 32), _request("c16", 16), _request("d16g", 16, guidance=5.0),
                    _request("e32", 32)]
        await asyncio.gather(*(engine.submit(engine.job(r)) for r in requests))
        return group.batches

    batches = asyncio.run(scenario())
    assert batches == [["a16", "c16"], ["b32", "e32"], ["d16g"]]  # the oldest job's companions first
    for batch in batches:
        assert len({name[1:3] for name in batch}) == 1


def test_guidance_scales_may_differ_when_the_pipeline_takes_one_per_sample() -> None:
    async def scenario() -> list[list[str]]:
        group = FakeGroup()
        engine = _engine(group, max_batch=4, per_sample_guidance=True)
        requests = [_request("a", guidance=3.0), _request("b", guidance=5.0), _request("c", guidance=1.0)]
        await asyncio.gather(*(engine.submit(engine.job(r)) for r in requests))
        return group.batches

    assert asyncio.run(scenario()) == [["a", "b"], ["c"]]  # CFG off (1.0) is another guidance mode


def test_a_lone_job_waits_for_companions_while_they_keep_arriving_within_batch_wait_ms() -> None:
    async def scenario() -> list[list[str]]:
        group = FakeGroup()
        engine = _engine(group, max_batch=4, wait_ms=200)
        jobs = []
        for name in ("first", "second", "third"):  # each arrives within 200 ms of the one before: one batch
            jobs.append(asyncio.ensure_future(engine.submit(engine.job(_request(name)))))
            await asyncio.sleep(0.12)
        await asyncio.gather(*jobs)
        await engine.submit(engine.job(_request("alone")))  # nothing follows it: it starts after 200 ms
        trickle = []
        for i in range(6):  # one every 150 ms: the wait stops at 3 x 200 ms, the rest forms the next batch
            trickle.append(asyncio.ensure_future(engine.submit(engine.job(_request(f"t{i}")))))
            await asyncio.sleep(0.15)
        await asyncio.gather(*trickle)
        return group.batches

    batches = asyncio.run(scenario())
    assert batches[:2] == [["first", "second", "third"], ["alone"]]
    assert [len(b) for b in batches[2:]] == [4, 2] and sum(batches[2:], []) == [f"t{i}" for i in range(6)]


def test_cancel_a_queued_job_removes_it_and_a_running_batch_stops_when_all_its_jobs_are_cancelled() -> None:
    async def scenario() -> tuple[list, int, list[list[str]]]:
        group = FakeGroup(step_s=0.05)
        engine = _engine(group, max_batch=1, wait_ms=0)
        running = engine.job(_request("running"))
        queued = engine.job(_request("queued"))
        after = engine.job(_request("after"))
        tasks = [asyncio.ensure_future(engine.submit(j)) for j in (running, queued, after)]
        await asyncio.sleep(0.07)  # the first batch is running, one step done
        await engine.cancel(queued)
        await engine.cancel(running)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes, engine.depth, group.batches

    outcomes, depth, batches = asyncio.run(scenario())
    assert isinstance(outcomes[0], JobCancelled) and isinstance(outcomes[1], JobCancelled)
    assert isinstance(outcomes[2], GenerationResponse) and outcomes[2].video == b"after"
    assert batches == [["running"], ["after"]]  # the cancelled queued job never ran
    assert depth == (0, 0)


def test_a_job_cancelled_twice_counts_once_and_stops_its_batch_once() -> None:
    async def scenario() -> tuple[object, int, int]:
        group = FakeGroup(step_s=0.05)
        stops = 0
        stop = group.stop

        async def counted_stop() -> None:
            nonlocal stops
            stops += 1
            await stop()

        group.stop = counted_stop
        engine = _engine(group, max_batch=1, wait_ms=0)
        job = engine.job(_request("deleted"))
        task = asyncio.ensure_future(engine.submit(job))
        await asyncio.sleep(0.07)  # running, one step done
        await engine.cancel(job)  # the runner's progress write found the record gone
        await engine.cancel(job)  # the ingress's DELETE cancelled the handle call
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        await engine.cancel(job)  # after the end: nothing
        return outcome, engine.jobs_cancelled, stops

    outcome, cancelled, stops = asyncio.run(scenario())
    assert isinstance(outcome, JobCancelled)
    assert cancelled == 1 and stops == 1


def test_a_cancelled_job_in_a_shared_batch_leaves_the_others_running() -> None:
    async def scenario() -> list:
        group = FakeGroup(step_s=0.05)
        engine = _engine(group, max_batch=2, wait_ms=100)
        jobs = [engine.job(_request(p)) for p in ("keep", "drop")]
        tasks = [asyncio.ensure_future(engine.submit(j)) for j in jobs]
        await asyncio.sleep(0.07)  # one step of four done
        await engine.cancel(jobs[1])
        return await asyncio.gather(*tasks, return_exceptions=True)

    keep, drop = asyncio.run(scenario())
    assert isinstance(keep, GenerationResponse) and keep.video == b"keep"
    assert isinstance(drop, JobCancelled)


def test_a_cancelled_caller_cancels_its_job() -> None:
    async def scenario() -> tuple[list[list[str]], tuple[int, int]]:
        group = FakeGroup(step_s=0.05)
        engine = _engine(group, max_batch=1, wait_ms=0)
        busy = asyncio.ensure_future(engine.submit(engine.job(_request("busy"))))
        waiting = asyncio.ensure_future(engine.submit(engine.job(_request("gone"))))
        await asyncio.sleep(0.02)
        waiting.cancel()
        await busy
        await asyncio.sleep(0.01)
        return group.batches, engine.depth

    batches, depth = asyncio.run(scenario())
    assert batches == [["busy"]] and depth == (0, 0)


def test_a_failed_batch_fails_each_of_its_jobs_with_the_batch_error() -> None:
    async def scenario() -> list:
        engine = _engine(FakeGroup(fail=WorkerGroupError("rank 1 died")), max_batch=3)
        jobs = [engine.job(_request(f"p{i}")) for i in range(2)]
        return await asyncio.gather(*(engine.submit(j) for j in jobs), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, WorkerGroupError) for o in outcomes)


@pytest.mark.parametrize("steps", [4])
def test_progress_reaches_every_job_of_the_batch_from_zero(steps: int) -> None:
    async def scenario() -> dict[str, list[int]]:
        engine = _engine(FakeGroup(), max_batch=2)
        seen: dict[str, list[int]] = {"a": [], "b": []}
        jobs = []
        for name in seen:
            async def report(done, total, name=name):
                seen[name].append(done)
            jobs.append(engine.job(_request(name), on_progress=report))
        await asyncio.gather(*(engine.submit(j) for j in jobs))
        return seen

    assert asyncio.run(scenario()) == {"a": list(range(steps + 1)), "b": list(range(steps + 1))}
