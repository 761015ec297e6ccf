"""Broadcast sequence parallel: one generation over the processes of a `torch.distributed` group (no Ray here).

- DSP for spatial-temporal models (Latte): frames sharded, all-to-all only around temporal attention.
- Ulysses for full 3D attention (CogVideoX ours; Wan 2.1/2.2 and LTX-Video through diffusers' context parallel).
- CFG parallel (degree 2), composable with either; also for Allegro and Mochi, which have no sequence split.
- Every collective runs inside the attention module's call, so a PAB broadcast skips it; bytes are reported to
  `pab.stats` and `pab.parallel.schedule` predicts them.

The names below load on first use, so that `pab.parallel.config` and `pab.parallel.layout` (the split rules the
request resolver checks in serving processes) do not import torch.
"""

from __future__ import annotations

from pab._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ParallelHandle": ".apply",
    "apply_parallel": ".apply",
    "check_latents": ".layout",
    "STRATEGIES": ".config",
    "ParallelConfig": ".config",
    "ParallelConfigError": ".config",
    "ParallelGroups": ".groups",
    "bind_store_socket": ".groups",
    "build_groups": ".groups",
    "init_group": ".groups",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
