"""The worker group of one generator replica: one Ray actor per placement-group bundle, one torch.distributed rank each.

The replica's placement group (declared by the deployment, `STRICT_PACK`) puts every bundle on one node, so the ranks
talk over that node's address. Rank 0 binds the store socket to that address before the group forms (the store
alone would listen on every interface), every rank loads the pipeline, and each generation runs on all ranks at once
with PAB and broadcast sequence parallel; rank 0 encodes the video and returns it with the stats.

A rank that dies mid-generation leaves the others blocked in a collective, so `WorkerGroup.run` returns as soon as
any rank fails, marks the group broken (the replica's health check then fails and Serve replaces the replica, whose
placement group takes the remaining workers with it) and raises `WorkerGroupError` with what happened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from serve_app.config import AppConfig
from serve_app.errors import invalid
from serve_app.model_card import ModelCard
from serve_app.schemas import CONTENT_FORMATS, GenerationRequest, GenerationResponse

logger = logging.getLogger("ray.serve")

WORKER_NAMESPACE = "pab-workers"
"""Ray namespace of the worker actors (named `<replica id>:rank<r>`), so operators and tests can find them."""


class WorkerGroupError(RuntimeError):
    """A worker died or the group is broken; the replica is unhealthy and will be replaced."""


class ReplicaUnavailableError(RuntimeError):
    """The replica's worker group broke before this request started on it: retry, another replica will take it."""


@dataclass(frozen=True)
class JobProgress:
    """Where rank 0 reports per-step progress of a job (the job store), and how often."""

    store_url: str
    job_id: str
    started_at: float
    interval_s: float


def _interface_for(address: str) -> str | None:
    """The network interface that holds `address`, so gloo talks over the node address and nothing else."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def _lower_priority(increment: int) -> None:
    """Raise the niceness of every thread of this process (Linux keeps one per thread; raising needs no rights)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: one value for the process
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        except OSError:  # a thread that ended meanwhile
            pass


class GenerationWorker:
    """One rank. Plain class: `WorkerGroup` wraps it with `ray.remote` and pins it to its bundle."""

    def __init__(self, rank: int, config: AppConfig) -> None:
        import torch

        self.rank, self.config = rank, config
        torch.set_num_threads(config.torch_threads)
        self._listen_socket = None
        self._generator = None

    def node_address(self) -> str:
        return ray.util.get_node_ip_address()

    def placement(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
            "rank": self.rank,
            "assigned_resources": ctx.get_assigned_resources(),
            "actor_id": ctx.get_actor_id(),
            "placement_group_id": ctx.get_placement_group_id(),
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
        }

    def open_store(self, host: str) -> int:
        """Rank 0: listen for the store on `host` only; returns the port."""
        from pab.parallel.groups import bind_store_socket

        self._listen_socket, port = bind_store_socket(host)
        return port

    def join(self, host: str, port: int) -> None:
        """Join the replica's process group (all ranks at once)."""
        from pab.parallel.groups import init_group

        iface = _interface_for(host)
        if iface is not None:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", iface)
        listen_fd = self._listen_socket.detach() if self._listen_socket is not None else None
        init_group(
            self.rank,
            self.config.world_size,
            host=host,
            port=port,
            listen_fd=listen_fd,
            timeout_s=self.config.collective_timeout_s,
        )

    def load(self) -> dict[str, Any]:
        """Load the pipeline, apply PAB and sequence parallel; returns the model card (JSON)."""
        from pab.parallel import ParallelConfig
        from pab.runtime.pipelines import VideoGenerator, load_pipeline

        cfg = self.config
        device = "cuda" if cfg.device == "cuda" else "cpu"
        pipeline = load_pipeline(cfg.model, device=device, dtype=cfg.dtype)
        parallel = ParallelConfig(
            sp_degree=cfg.sp_degree, cfg_degree=cfg.cfg_degree, timeout_s=cfg.collective_timeout_s
        )
        self._generator = VideoGenerator(pipeline, pab=cfg.pab_preset, defaults=cfg.defaults, parallel=parallel,
                                         compile=cfg.compile)
        if device == "cpu" and cfg.cpu_generation_niceness:
            _lower_priority(cfg.cpu_generation_niceness)
        return ModelCard.from_generator(cfg.model_name, self._generator).model_dump(mode="json")

    def generate(self, request: GenerationRequest, progress: JobProgress | None) -> GenerationResponse | None:
        """Run one generation on this rank; rank 0 returns the encoded video, the other ranks None."""
        from pab.runtime.request.params import GenerationParams
        from pab.runtime.video import encode_spritesheet, encode_thumbnail, encode_video

        on_step = _StepClock(progress) if self.rank == 0 else None
        try:
            result = self._generator.generate(
                GenerationParams(**request.generation_kwargs()), pab=request.pab, on_step=on_step
            )
        except ValueError as exc:  # a request the model or the parallel split refuses; same on every rank
            raise invalid(str(exc), param=getattr(exc, "field", None)) from None  # pickles across Ray
        finally:
            if on_step is not None:
                on_step.close()
        if self.rank != 0:
            return None
        start = time.perf_counter()
        video = encode_video(result.frames, fps=request.fps, fmt=CONTENT_FORMATS["video"])
        thumbnail = encode_thumbnail(result.frames, CONTENT_FORMATS["thumbnail"])
        spritesheet = encode_spritesheet(result.frames, CONTENT_FORMATS["spritesheet"])
        timings = {**result.timings, "encode_s": time.perf_counter() - start, "steps_s": on_step.step_seconds}
        return GenerationResponse(
            model=self.config.model_name,
            video=video,
            thumbnail=thumbnail,
            spritesheet=spritesheet,
            request=request,
            stats=result.stats,
            timings=timings,
        )


class _StepClock:
    """Rank 0's `on_step`: times each denoising step and writes the job's progress to the store.

    The writes run on a background thread, one at a time (a step that finds one still in flight skips its own), so
    a slow store (an object store: tens of ms a write) never holds up the denoising loop that the other ranks wait
    on in their collectives. `close()` waits for the last write, so none lands after the job's final state.
    """

    def __init__(self, progress: JobProgress | None) -> None:
        self._writer = self._executor = self._pending = None
        if progress is not None:
            from serve_app.store import JobStore, ProgressWriter

            store = JobStore(progress.store_url)
            self._writer = ProgressWriter(store, progress.job_id, progress.started_at, progress.interval_s)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pab-progress")
        self._last = time.perf_counter()
        self.step_seconds: list[float] = []

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now
        if self._executor is not None and (self._pending is None or self._pending.done()):
            self._pending = self._executor.submit(self._write, step + 1, total)  # `step` is the finished step's index

    def _write(self, done: int, total: int) -> None:
        try:
            self._writer(done, total)
        except Exception:  # progress is best effort: a failed write must not fail the generation
            logger.warning("pab: could not write job progress", exc_info=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class WorkerGroup:
    r"""
    The workers of one replica, started in the replica's own placement group (bundle i holds rank i).

    `start()` forms the process group and loads the pipeline; `run()` generates; `broken` is the reason the
    group can no longer be used, or None.
    """

    def __init__(self, config: AppConfig, placement_group: PlacementGroup | None, name_prefix: str) -> None:
        if placement_group is None:
            raise WorkerGroupError(
                "the generator replica has no placement group; deploy it with placement_group_bundles "
                "(serve_app.builder:build_app does) so its workers are reserved next to it"
            )
        self.config = config
        self.placement_group = placement_group
        self.broken: str | None = None
        self.card: ModelCard | None = None
        self.startup: dict[str, float] = {}
        bundle = config.worker_bundle()
        actor_cls = ray.remote(GenerationWorker)
        self.workers = [
            actor_cls.options(
                name=f"{name_prefix}:rank{rank}",
                namespace=WORKER_NAMESPACE,
                num_cpus=bundle["CPU"],
                num_gpus=bundle.get("GPU", 0),
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=rank
                ),
            ).remote(rank, config)
            for rank in range(config.world_size)
        ]

    async def start(self) -> ModelCard:
        """Form the group and load the pipeline on every rank; `startup` records how long each phase took."""
        began = time.perf_counter()
        host, *_ = await asyncio.gather(*(w.node_address.remote() for w in self.workers))  # every process is up
        processes = time.perf_counter()
        port = await self.workers[0].open_store.remote(host)
        await asyncio.gather(*(w.join.remote(host, port) for w in self.workers))
        joined = time.perf_counter()
        cards = await asyncio.gather(*(w.load.remote() for w in self.workers))
        loaded = time.perf_counter()
        self.startup = {
            "worker_processes_s": round(processes - began, 3),
            "process_group_s": round(joined - processes, 3),
            "load_s": round(loaded - joined, 3),
        }
        self.card = ModelCard.model_validate(cards[0])
        return self.card

    async def placements(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.placement.remote() for w in self.workers)))

    async def run(self, request: GenerationRequest, progress: JobProgress | None = None) -> GenerationResponse:
        """Generate on every rank; return rank 0's response, or raise as soon as any rank fails."""
        if self.broken is not None:
            raise ReplicaUnavailableError(f"this generator replica is being replaced ({self.broken}); retry")
        futures = [asyncio.ensure_future(w.generate.remote(request, progress)) for w in self.workers]
        _, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
        if not pending and all(f.exception() is None for f in futures):
            return futures[0].result()
        if pending:  # one rank failed while others still run: they are stuck in (or heading for) a collective
            _, pending = await asyncio.wait(pending, timeout=self.config.collective_grace_s)
        errors = {rank: f.exception() for rank, f in enumerate(futures) if f.done() and f.exception() is not None}
        dead = [rank for rank, exc in errors.items() if isinstance(exc, ray.exceptions.RayActorError)]
        if not dead and not pending:
            raise _cause(errors[min(errors)])  # every rank finished: a request error, the group is still consistent
        for future in pending:
            future.cancel()
        rank = dead[0] if dead else min(errors)
        self._break(f"worker rank {rank} of {len(self.workers)} failed: {_describe(errors[rank])}")
        raise WorkerGroupError(
            f"{self.broken} during generation; this replica's worker group is broken and Serve is replacing it; "
            "resubmit the request"
        )

    def _break(self, reason: str) -> None:
        self.broken = reason
        logger.error("pab worker group broken: %s; killing the remaining workers", self.broken)
        self.shutdown()

    def shutdown(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # already dead
                pass


def _cause(exc: BaseException) -> BaseException:
    """The user-level exception inside a RayTaskError."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ray.exceptions.RayActorError):
        return "the worker process died"
    cause = _cause(exc)
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
