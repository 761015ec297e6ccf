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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Sequence

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pab.runtime.request.card import ModelCard
from serve_app.config import AppConfig
from serve_app.logs import quiet_libraries
from serve_app.schemas import CONTENT_FORMATS, GenerationRequest, GenerationResponse

from .quality_probe import ServedFrames, measure

logger = logging.getLogger("ray.serve")

ENCODE_THREADS = 4
"""Videos of a batch rank 0 encodes at once (each mp4 is an ffmpeg subprocess; the other ranks are idle meanwhile)."""
WORKER_NAMESPACE = "pab-workers"
"""Ray namespace of the worker actors (named `<replica id>:rank<r>`), so operators and tests can find them."""


class WorkerGroupError(RuntimeError):
    """A worker died or the group is broken; the replica is unhealthy and will be replaced."""


class ReplicaUnavailableError(RuntimeError):
    """The replica's worker group broke before this request started on it: retry, another replica will take it."""


class StepProgress:
    """Rank 0's count of finished denoising steps, read by the replica while the batch runs (`GenerationWorker.progress`,
    a second actor thread), and the batch's stop flag, set by the replica and agreed on by every rank at a step end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done, self.total, self.stop = 0, 0, False

    def start(self, total: int) -> None:
        with self._lock:
            self.done, self.total, self.stop = 0, total, False

    def step(self, done: int, total: int) -> None:
        with self._lock:
            self.done, self.total = done, total

    def read(self) -> tuple[int, int]:
        with self._lock:
            return self.done, self.total


class BatchStopped(RuntimeError):
    """Every job of the batch was cancelled: the ranks stopped it together at a step end."""


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
        quiet_libraries(config.log_level)  # before torch loads
        import torch

        self.rank, self.config = rank, config
        torch.set_num_threads(config.torch_threads)
        self._listen_socket = None
        self._generator = None
        self._progress = StepProgress()
        self._served = ServedFrames.for_config(config, rank)

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
                                         batch_invariant=True, compile=cfg.compile)
        if device == "cpu" and cfg.cpu_generation_niceness:
            _lower_priority(cfg.cpu_generation_niceness)
        return ModelCard.from_generator(cfg.model_name, self._generator).model_dump(mode="json")

    def progress(self) -> tuple[int, int]:
        """(finished steps, total steps) of the batch running now; answered from a second actor thread."""
        return self._progress.read()

    def stop(self) -> None:
        """Ask the running batch to stop at its next step end (every rank agrees before any stops)."""
        self._progress.stop = True

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResponse] | None:
        """Run one batch of resolved requests on this rank; rank 0 returns the encoded videos, other ranks None."""
        self._progress.start(batch[0].num_inference_steps)
        results = self._generator.generate_batch(batch, on_step=self._on_step)
        if self._served is not None:
            self._served.keep_all(results)
        if self.rank != 0:
            return None
        with ThreadPoolExecutor(max_workers=min(len(results), ENCODE_THREADS)) as pool:  # ffmpeg runs as subprocesses
            return list(pool.map(self._encode, results))

    def _encode(self, result: Any) -> GenerationResponse:
        """One video of the batch as mp4 + thumbnail + spritesheet + its lossless frames, with its stats."""
        from pab.runtime.request.conditioning import encode_frames
        from pab.runtime.video import encode_spritesheet, encode_thumbnail, encode_video

        start = time.perf_counter()
        video = encode_video(result.frames, fps=result.request.fps, fmt=CONTENT_FORMATS["video"])
        thumbnail = encode_thumbnail(result.frames, CONTENT_FORMATS["thumbnail"])
        spritesheet = encode_spritesheet(result.frames, CONTENT_FORMATS["spritesheet"])
        frames = encode_frames(result.frames)
        stats = result.stats.with_timings(encode_s=time.perf_counter() - start)
        return GenerationResponse(model=self.config.model_name, video=video, thumbnail=thumbnail,
                                  spritesheet=spritesheet, frames=frames, request=result.request, stats=stats)

    def measure_quality(self, batch: Sequence[GenerationRequest], probe_pab: dict[str, Any] | None) -> dict | None:
        """The quality watch's re-run of one served request with PAB off (`deployments.quality_probe.measure`);
        rank 0 returns the scores, other ranks None. Stops at a step end like a batch."""
        self._progress.start(batch[0].num_inference_steps)
        scores = measure(self._generator, batch[0], self._served, probe_pab, self._on_step)
        return scores if self.rank == 0 else None

    def _on_step(self, step: int, total: int) -> None:
        """After each step: record progress, and stop the batch on every rank at once if the replica asked any."""
        self._progress.step(step + 1, total)
        if _agree(self._progress.stop, self.config.world_size):
            raise BatchStopped(f"stopped after step {step + 1} of {total}: every job of the batch was cancelled")


def _agree(flag: bool, world_size: int) -> bool:
    """True on every rank when any rank's flag is set (one tiny all-reduce; never counted as PAB traffic)."""
    if world_size == 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


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
                "(serve_app.entrypoints.builder:build_app does) so its workers are reserved next to it"
            )
        self.config = config
        self.placement_group = placement_group
        self.broken: str | None = None
        self.card: ModelCard | None = None
        self.startup: dict[str, float] = {}
        bundle = config.worker_bundle()
        actor_cls = ray.remote(GenerationWorker)
        self.names = [f"{name_prefix}:rank{rank}" for rank in range(config.world_size)]
        self.workers = [
            actor_cls.options(
                name=self.names[rank],
                namespace=WORKER_NAMESPACE,
                num_cpus=bundle["CPU"],
                num_gpus=bundle.get("GPU", 0),
                max_restarts=0,
                max_concurrency=2,  # `progress`/`stop` answer while `generate` runs
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

    async def run(
        self,
        batch: Sequence[GenerationRequest],
        on_progress: Callable[[int, int], Awaitable[None]] | None = None,
        poll_s: float = 0.5,
        call: str = "generate",
        args: tuple[Any, ...] = (),
    ) -> list[GenerationResponse]:
        """Generate one batch on every rank; return rank 0's responses, or raise as soon as any rank fails.

        While it runs, rank 0's step count is read every `poll_s` and handed to `on_progress(done, total)`. `call`
        names another `GenerationWorker` method that takes the batch (and `args`), e.g. `measure_quality`."""
        if self.broken is not None:
            raise ReplicaUnavailableError(f"this generator replica is being replaced ({self.broken}); retry")
        futures = [asyncio.ensure_future(getattr(w, call).remote(list(batch), *args)) for w in self.workers]
        watcher = asyncio.ensure_future(self._watch(futures, on_progress, poll_s)) if on_progress else None
        try:
            _, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            if watcher is not None:
                watcher.cancel()
        if not pending and all(f.exception() is None for f in futures):
            return futures[0].result()
        return await self._fail(futures, pending)

    async def _watch(self, futures: list[asyncio.Future], on_progress: Callable[[int, int], Awaitable[None]],
                     poll_s: float) -> None:
        """Report rank 0's progress until the batch ends (a failed read only skips one report)."""
        last = -1
        while not all(f.done() for f in futures):
            await asyncio.sleep(poll_s)
            try:
                done, total = await self.workers[0].progress.remote()
            except Exception:
                continue
            if done != last:
                last = done
                await on_progress(done, total)

    async def stop(self) -> None:
        """Stop the running batch at its next step end, on every rank (`BatchStopped` then ends `run`)."""
        await asyncio.gather(*(w.stop.remote() for w in self.workers), return_exceptions=True)

    async def _fail(self, futures: list[asyncio.Future], pending: set[asyncio.Future]) -> list[GenerationResponse]:
        if pending:  # one rank failed while others still run: they are stuck in (or heading for) a collective
            _, pending = await asyncio.wait(pending, timeout=self.config.collective_grace_s)
        errors = {rank: f.exception() for rank, f in enumerate(futures) if f.done() and f.exception() is not None}
        dead = [rank for rank, exc in errors.items() if isinstance(exc, ray.exceptions.RayActorError)]
        if not dead and not pending:
            raise _cause(errors[min(errors)])  # every rank finished: the group is still consistent
        for future in pending:
            future.cancel()
        rank = dead[0] if dead else min(errors)
        self._break(f"worker rank {rank} of {len(self.workers)} failed: {_describe(errors[rank])}")
        raise WorkerGroupError(
            f"{self.broken} during generation; this replica's worker group is broken and Serve is replacing it"
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
