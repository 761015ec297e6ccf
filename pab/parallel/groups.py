"""Process groups for one model replica: start the world, then carve it into sequence- and CFG-parallel groups.

Every group carries the config's timeout, so when one rank dies or stops issuing collectives the others raise
instead of hanging (`torch.distributed.new_group` would otherwise fall back to a 30 minute default).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .config import ParallelConfig, ParallelConfigError

MESH_DIMS = ("cfg", "ring", "ulysses")
"""Mesh axes; "ring" (size 1) and "ulysses" are the names diffusers' context parallel looks up."""


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def bind_store_socket(host: str = "127.0.0.1", port: int = 0) -> tuple[socket.socket, int]:
    """A listening socket on `host` only, for rank 0's store (`TCPStore` alone would listen on every interface)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock, sock.getsockname()[1]


def init_group(
    rank: int,
    world_size: int,
    *,
    host: str = "127.0.0.1",
    port: int,
    listen_fd: int | None = None,
    timeout_s: float = 120.0,
    backend: str | None = None,
) -> None:
    r"""
    Join the default process group of one replica (every rank calls this; rank 0 hosts the store).

    Args:
        rank, world_size: this process and the replica's process count.
        host, port: where rank 0's store listens.
        listen_fd: on rank 0, a socket already listening on (host, port), e.g. `bind_store_socket(host)[0].detach()`;
            the store takes ownership. Without it rank 0 binds (host, port) itself, on that address only.
        timeout_s: store and collective timeout.
        backend: "gloo" or "nccl"; NCCL when CUDA is available, else gloo.
    """
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialized in this process; call init_group once per process")
    if not 0 <= rank < world_size:
        raise ParallelConfigError(f"rank must be in [0, {world_size}), got {rank}", "rank")
    timeout = timedelta(seconds=timeout_s)
    if rank == 0:
        if listen_fd is None:
            listen_fd = bind_store_socket(host, port)[0].detach()
        store = dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listen_fd)
    else:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend or default_backend(), store=store, rank=rank, world_size=world_size, timeout=timeout)


def _options(backend: str, timeout: timedelta):
    options = dist.ProcessGroupNCCL.Options() if backend == "nccl" else dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    return options


@dataclass
class ParallelGroups:
    """This rank's place in the replica and the groups it talks over."""

    config: ParallelConfig
    rank: int
    sp_rank: int
    cfg_rank: int
    mesh: DeviceMesh

    @property
    def sp_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("ulysses")

    @property
    def cfg_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("cfg")


def build_groups(config: ParallelConfig) -> ParallelGroups:
    """Split the default group (world size must be `sp_degree * cfg_degree`); every rank must call this together."""
    if not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call pab.parallel.init_group(rank, world_size, ...) in every "
            "process before applying a ParallelConfig"
        )
    world = dist.get_world_size()
    if world != config.world_size:
        raise ParallelConfigError(
            f"sp_degree x cfg_degree = {config.sp_degree} x {config.cfg_degree} = {config.world_size} must equal the "
            f"process group's world size {world}; start {config.world_size} processes or change the degrees",
            "sp_degree",
        )
    backend = dist.get_backend()
    device_type = "cuda" if backend == "nccl" else "cpu"
    override = (backend, _options(backend, timedelta(seconds=config.timeout_s)))
    mesh = init_device_mesh(
        device_type,
        (config.cfg_degree, 1, config.sp_degree),
        mesh_dim_names=MESH_DIMS,
        backend_override={name: override for name in MESH_DIMS},
    )
    # diffusers' context parallel flattens ("ring", "ulysses"); create it here so it carries the timeout too.
    mesh["ring", "ulysses"]._flatten(backend_override=override)
    rank = dist.get_rank()
    return ParallelGroups(config, rank, rank % config.sp_degree, rank // config.sp_degree, mesh)
