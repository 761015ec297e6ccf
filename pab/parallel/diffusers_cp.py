"""Ulysses through diffusers' own context parallel, for models that ship a `_cp_plan` (Wan, LTX-Video).

diffusers does the sharding, the q/k/v/out all-to-alls (inside the attention processor, so a PAB broadcast skips
them) and the output gather. Three things are added here: its functional collectives are counted through
`pab.stats.record_collective` like ours; `enable_parallelism` is made to run on CPU (it derives a device index
from `torch.accelerator.device_count()`, which is 0 without an accelerator); and the text stays whole on every rank,
with cross-attention computed locally on each rank's video queries (as Wan's plan already does). LTX-Video's own plan
also splits the text and its mask, which diffusers' Ulysses then gathers with all heads against each rank's share
of them, a shape mismatch; keeping text local also spares the text all-to-alls.
"""

from __future__ import annotations

import contextlib
import threading
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator
from unittest import mock

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from diffusers import ContextParallelConfig
from diffusers.models._modeling_parallel import ContextParallelInput
from diffusers.hooks import context_parallel as diffusers_cp_hooks
from diffusers.models import attention_dispatch

from ..stats import record_collective
from .comm import ALL_GATHER, ALL_TO_ALL
from .groups import ParallelGroups

_PATCHED_MODULES: tuple[ModuleType, ...] = (attention_dispatch, diffusers_cp_hooks)
_lock = threading.Lock()
_installs = 0


def _group_size(group: Any) -> int:
    return group.size()  # a ProcessGroup or a DeviceMesh: diffusers passes either


class CountingFuncol:
    """Stands in for `torch.distributed._functional_collectives` inside diffusers: counts, then delegates."""

    def __getattr__(self, name: str) -> Any:
        return getattr(funcol, name)

    def all_to_all_single(self, x: torch.Tensor, output_split_sizes: Any, input_split_sizes: Any, group: Any,
                          *args: Any, **kwargs: Any) -> torch.Tensor:
        n = _group_size(group)
        nbytes = x.numel() * x.element_size()
        if input_split_sizes is None:
            sent = nbytes * (n - 1) // n
        else:  # uneven split: everything except the chunk addressed to this rank
            own = input_split_sizes[dist.get_rank(group)] * (nbytes // max(x.shape[0], 1))
            sent = nbytes - own
        record_collective(ALL_TO_ALL, sent)
        return funcol.all_to_all_single(x, output_split_sizes, input_split_sizes, group, *args, **kwargs)

    def all_gather_tensor(self, x: torch.Tensor, gather_dim: int, group: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        record_collective(ALL_GATHER, x.numel() * x.element_size() * (_group_size(group) - 1))
        return funcol.all_gather_tensor(x, gather_dim, group, *args, **kwargs)


def _install_counting() -> Callable[[], None]:
    global _installs
    with _lock:
        if _installs == 0:
            counting = CountingFuncol()
            for module in _PATCHED_MODULES:
                module.funcol = counting
        _installs += 1

    def uninstall() -> None:
        global _installs
        with _lock:
            _installs -= 1
            if _installs == 0:
                for module in _PATCHED_MODULES:
                    module.funcol = funcol

    return uninstall


@contextlib.contextmanager
def _cpu_device_count() -> Iterator[None]:
    """`enable_parallelism` computes `rank % torch.accelerator.device_count()`; on CPU that count is 0."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", return_value=1):
        yield


PER_TOKEN_TIMESTEP: dict[str, dict[str, Any]] = {
    "LTXVideoTransformer3DModel": {"timestep": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)},
}
"""Root inputs to split beside the video tokens where the model's own plan omits them. LTX-Video's image-to-video
pipelines pass one timestep per token (`[B, tokens]`, 0 on the conditioning frames); split with the tokens, each
rank modulates its own share (a 1-D per-sample timestep is left whole, as Wan's plan does for its own)."""


def video_only_plan(plan: dict[str, Any], transformer_class: str = "") -> dict[str, Any]:
    """The model's context-parallel plan without the entries that split text (`encoder_*` inputs), plus the root
    inputs `PER_TOKEN_TIMESTEP` adds for `transformer_class`."""
    out = {module: {k: v for k, v in entry.items() if not str(k).startswith("encoder_")} if isinstance(entry, dict)
           else entry for module, entry in plan.items()}
    extra = PER_TOKEN_TIMESTEP.get(transformer_class)
    if extra:
        out[""] = {**out.get("", {}), **extra}
    return out


def enable_diffusers_ulysses(transformer: torch.nn.Module, groups: ParallelGroups,
                             local_attention: Iterable[torch.nn.Module] = ()) -> Callable[[], None]:
    """`transformer.enable_parallelism` with Ulysses over this replica's SP group, text unsplit and the
    `local_attention` modules (cross-attention) left to run on each rank's shard; returns the undo."""
    config = ContextParallelConfig(ulysses_degree=groups.config.sp_degree, mesh=groups.mesh)
    plan = video_only_plan(transformer._cp_plan, type(transformer).__name__)
    uninstall = _install_counting()
    try:
        with _cpu_device_count():
            transformer.enable_parallelism(config=config, cp_plan=plan)
    except BaseException:
        uninstall()
        raise
    for module in local_attention:
        module.processor._parallel_config = None

    def undo() -> None:
        diffusers_cp_hooks.remove_context_parallel(transformer, plan)
        for module in transformer.modules():
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "_parallel_config"):
                processor._parallel_config = None
        transformer._parallel_config = None
        uninstall()

    return undo
