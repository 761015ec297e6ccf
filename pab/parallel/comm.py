"""The only collectives sequence parallel issues, each reported to `pab.stats.record_collective`.

Byte convention (used by the analytic count in `pab.parallel.schedule` as well): the bytes this rank SENDS to other
ranks. An all-to-all of a local tensor of `b` bytes over `n` ranks sends `b * (n - 1) / n`; an all-gather of a
local shard of `b` bytes sends `b * (n - 1)`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..stats import record_collective

ALL_TO_ALL = "all_to_all"
ALL_GATHER = "all_gather"


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """
    Re-shard: split `x` into `n` equal chunks along `scatter_dim`, send chunk `j` to rank `j`, and concatenate what
    arrives along `gather_dim` in rank order. `x.shape[scatter_dim]` must be divisible by the group size.
    """
    n = dist.get_world_size(group)
    if n == 1:
        return x
    if x.shape[scatter_dim] % n:
        raise ValueError(f"all_to_all: dim {scatter_dim} of shape {tuple(x.shape)} is not divisible by {n} ranks")
    send = torch.stack(x.chunk(n, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    record_collective(ALL_TO_ALL, _nbytes(send) * (n - 1) // n)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


def all_gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Concatenate every rank's `x` (same shape on all ranks) along `dim`, in rank order."""
    n = dist.get_world_size(group)
    if n == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    record_collective(ALL_GATHER, _nbytes(x) * (n - 1))
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def shard(x: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """This rank's equal slice of `x` along `dim` (no communication: every rank holds the full `x`)."""
    n = dist.get_world_size(group)
    return x.chunk(n, dim=dim)[dist.get_rank(group)] if n > 1 else x
