"""Broadcast sequence parallel: one generation over the processes of a `torch.distributed` group (no Ray here).

- DSP for spatial-temporal models (Latte): frames sharded, all-to-all only around temporal attention.
- Ulysses for full 3D attention (CogVideoX ours; Wan 2.1/2.2 and LTX-Video through diffusers' context parallel).
- CFG parallel (degree 2), composable with either; also for Allegro and Mochi, which have no sequence split.
- Every collective runs inside the attention module's call, so a PAB broadcast skips it; bytes are reported to
  `pab.stats` and `pab.parallel.schedule` predicts them.
"""

from .apply import ParallelHandle, apply_parallel
from .layout import check_latents
from .config import STRATEGIES, ParallelConfig, ParallelConfigError
from .groups import ParallelGroups, bind_store_socket, build_groups, init_group

__all__ = [
    "STRATEGIES",
    "ParallelConfig",
    "ParallelConfigError",
    "ParallelGroups",
    "ParallelHandle",
    "apply_parallel",
    "bind_store_socket",
    "build_groups",
    "check_latents",
    "init_group",
]
