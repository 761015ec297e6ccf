"""Which family can split how: the refusals `apply_parallel` raises, torch-free so a server refuses a parallel
setting its model cannot run when it is configured (`serve_app.entrypoints.builder.build_app`), not after its
replicas have failed to start."""

from __future__ import annotations

from ..adapters import ADAPTERS, ModelAdapter
from .config import ParallelConfig, ParallelConfigError

NO_SEQUENCE_PARALLEL: dict[str, str] = {
    "hunyuanvideo": "its joint attention runs over video and masked text tokens together and diffusers ships no "
                    "context-parallel plan for it",
    "allegro": "its attention processor calls scaled_dot_product_attention itself (no context-parallel hook point "
               "in diffusers) and applies a 3D RoPE of its own",
    "mochi": "its joint attention drops each sample's padded text tokens inside the processor (no context-parallel "
             "hook point in diffusers)",
}
"""Families without a sequence split here, and why (the error names the field and says so)."""

NO_CFG_PARALLEL: dict[str, str] = {
    "hunyuanvideo": "HunyuanVideo's guidance is distilled into the transformer (one forward per step); its true CFG "
                    "(true_cfg_scale) encodes the negative prompt in a separate call that CFG parallel cannot swap",
}


def check_supported(adapter: ModelAdapter, config: ParallelConfig) -> None:
    """Refuse, before any group is built, what this family cannot split; the error names the field."""
    strategy = config.resolve_strategy(adapter.sp_strategy)
    if config.sp_degree > 1 and adapter.name in NO_SEQUENCE_PARALLEL:
        splitting = sorted(set(ADAPTERS) - set(NO_SEQUENCE_PARALLEL))
        raise ParallelConfigError(
            f"sequence parallel is not available for {adapter.name}: {NO_SEQUENCE_PARALLEL[adapter.name]}. Use "
            f"sp_degree=1 (sequence parallel runs on {splitting})"
            + ("" if adapter.name in NO_CFG_PARALLEL else "; cfg_degree=2 works for it"),
            "sp_degree",
        )
    if config.cfg_degree > 1 and adapter.name in NO_CFG_PARALLEL:
        raise ParallelConfigError(f"cfg_degree must be 1 for {adapter.name}: {NO_CFG_PARALLEL[adapter.name]}",
                                  "cfg_degree")
    if config.sp_degree > 1 and strategy == "dsp" and adapter.sp_strategy != "dsp":
        raise ParallelConfigError(
            f"strategy='dsp' needs separate spatial and temporal attention; {adapter.name} has full 3D attention: "
            "use strategy='ulysses' or 'auto'",
            "strategy",
        )
