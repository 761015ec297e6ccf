"""`apply_parallel`: one entry point that shards a pipeline's transformer forward over a replica's processes.

Every rank runs the same pipeline loop (text encoding, scheduler, VAE) with the same seed; only the transformer
forward is split. Apply this BEFORE `pab.hooks.apply_pab`, so that PAB's hooks wrap the parallel attention (a
broadcast then skips its collectives) and PAB's root scope books the input/output collectives as "other".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry

from ..adapters import ModelAdapter, adapter_for
from ..geometry import spatial_scale, temporal_scale
from .attention import DSPTemporalProcessor, UlyssesAttnProcessor
from .cfg import BatchCFGHook, TwoPassCFGHook, swap_prompt_embeddings
from .config import ParallelConfig, ParallelConfigError
from .groups import ParallelGroups, build_groups
from .rules import check_latents, latent_shape
from .sharding import (
    GatherOutputHook,
    LatteFrameShardHook,
    ShapeCheckHook,
    TextVideoShardHook,
    TokenLayout,
)

SP_HOOK = "pab_parallel_sp"
CFG_HOOK = "pab_parallel_cfg"
CHECK_HOOK = "pab_parallel_check"

BATCH_ARGS: dict[str, tuple[str, ...]] = {
    "latte": ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"),
    "cogvideox": ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"),
}
"""Forward arguments that carry the CFG batch, for pipelines that batch [uncond; cond]."""


@dataclass
class ParallelHandle:
    """What `apply_parallel` returns: this rank's place, the scheme in use, request validation and `remove()`."""

    config: ParallelConfig
    groups: ParallelGroups
    model: str
    strategy: str
    transformer: torch.nn.Module
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def rank(self) -> int:
        return self.groups.rank

    def validate_latents(self, latent_shape: tuple[int, ...]) -> None:
        """Raise `ParallelConfigError` (naming the request field) when this latent video cannot be split."""
        check_latents(self.model, self.strategy, self.transformer, self.config.sp_degree, latent_shape)

    def validate_request(self, pipeline: Any, num_frames: int, height: int, width: int) -> None:
        """Request-time check of an output size (pixels) against the split; same rules as each forward applies."""
        frames = (num_frames - 1) // temporal_scale(pipeline) + 1
        scale = spatial_scale(pipeline)
        self.validate_latents(latent_shape(self.model, self.transformer, frames, height // scale, width // scale))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()
        if getattr(self.transformer, "_pab_parallel", None) is self:
            del self.transformer._pab_parallel


def _swap_processor(module: torch.nn.Module, processor: Any, undo: list[Callable[[], None]]) -> None:
    original = module.processor
    module.set_processor(processor)
    undo.append(lambda: module.set_processor(original))


def _register(module: torch.nn.Module, hook: Any, name: str, undo: list[Callable[[], None]]) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)
    undo.append(lambda: registry.remove_hook(name, recurse=False))


def _attention_modules(adapter: ModelAdapter, transformer: torch.nn.Module, kind: str) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, k, _, module in adapter.iter_modules(transformer) if k == kind]


def _install_latte(handle: ParallelHandle, adapter: ModelAdapter) -> None:
    transformer, group, n = handle.transformer, handle.groups.sp_group, handle.config.sp_degree
    temporal = _attention_modules(adapter, transformer, "temporal")
    spatial = _attention_modules(adapter, transformer, "spatial")
    if handle.strategy == "ulysses":
        for name, module in spatial + temporal:
            UlyssesAttnProcessor.check_module(module, name, n)
    for name, module in temporal:
        processor = (UlyssesAttnProcessor(group, seq_dim=1) if handle.strategy == "ulysses"
                     else DSPTemporalProcessor(module.processor, group))
        _swap_processor(module, processor, handle._undo)
    if handle.strategy == "ulysses":
        for name, module in spatial:
            _swap_processor(module, UlyssesAttnProcessor(group, seq_dim=0), handle._undo)

    def check(hidden_states: torch.Tensor) -> None:
        check_latents("latte", handle.strategy, transformer, n, tuple(hidden_states.shape))

    _register(transformer, LatteFrameShardHook(group, check), SP_HOOK, handle._undo)


def _install_cogvideox(handle: ParallelHandle, adapter: ModelAdapter) -> None:
    transformer, group, n = handle.transformer, handle.groups.sp_group, handle.config.sp_degree
    if handle.strategy != "ulysses":
        raise ParallelConfigError(
            "strategy='dsp' needs separate spatial and temporal attention; CogVideoX has full 3D attention: use "
            "strategy='ulysses' or 'auto'",
            "strategy",
        )
    spatial = _attention_modules(adapter, transformer, "spatial")
    for name, module in spatial:
        UlyssesAttnProcessor.check_module(module, name, n)
    layout = TokenLayout()  # video tokens of the forward in flight, padded to a multiple of sp_degree
    for name, module in spatial:
        _swap_processor(module, UlyssesAttnProcessor(group, seq_dim=1, joint_text=True, layout=layout), handle._undo)
    _register(transformer.patch_embed, TextVideoShardHook(group, layout), SP_HOOK, handle._undo)
    _register(transformer.proj_out, GatherOutputHook(group, dim=1, layout=layout), SP_HOOK, handle._undo)


def _install_wan(handle: ParallelHandle, adapter: ModelAdapter) -> None:
    from .diffusers_cp import enable_diffusers_ulysses  # imports diffusers' attention dispatch only when needed

    transformer, n = handle.transformer, handle.config.sp_degree
    if handle.strategy != "ulysses":
        raise ParallelConfigError("strategy='dsp' does not fit Wan's full 3D attention: use 'ulysses' or 'auto'", "strategy")
    heads = transformer.config.num_attention_heads
    if heads % n:
        raise ParallelConfigError(
            f"Wan has {heads} attention heads, not divisible by sp_degree={n}; use an sp_degree dividing {heads}",
            "sp_degree",
        )
    handle._undo.append(enable_diffusers_ulysses(transformer, handle.groups))

    def check(latents: torch.Tensor) -> None:
        check_latents("wan", "ulysses", transformer, n, tuple(latents.shape))

    # Outermost on the root, so a bad shape raises our clear error before diffusers' split hook asserts.
    _register(transformer, ShapeCheckHook(check), CHECK_HOOK, handle._undo)


_INSTALLERS: dict[str, Callable[[ParallelHandle, ModelAdapter], None]] = {
    "latte": _install_latte,
    "cogvideox": _install_cogvideox,
    "wan": _install_wan,
}


def apply_parallel(target: Any, config: ParallelConfig, groups: ParallelGroups | None = None) -> ParallelHandle:
    r"""
    Split every forward of a pipeline's transformer over the processes of this replica.

    Args:
        target: a diffusers pipeline (needed for CFG parallel of two-pass pipelines such as Wan) or its transformer.
        config: the degrees and scheme; `sp_degree * cfg_degree` must equal the world size.
        groups: from `build_groups(config)`; built here when omitted (every rank must call this together).
    """
    if not isinstance(config, ParallelConfig):
        raise ParallelConfigError(f"config must be a ParallelConfig, got {type(config).__name__}")
    pipeline = target if hasattr(target, "transformer") else None
    transformer = pipeline.transformer if pipeline is not None else target
    if getattr(transformer, "_pab_handle", None) is not None:
        raise ParallelConfigError(
            "PAB is already applied to this transformer: apply parallel first, then PAB, so a broadcast skips the "
            "collectives (remove the PAB handle and apply it again after apply_parallel)"
        )
    if getattr(transformer, "_pab_parallel", None) is not None:
        raise ParallelConfigError("parallel is already applied to this transformer; call handle.remove() first")
    if config.world_size > 1 and pipeline is not None and getattr(pipeline, "transformer_2", None) is not None:
        raise ParallelConfigError(
            f"{type(pipeline).__name__} has a second transformer (transformer_2, a two-expert Wan 2.2 checkpoint); "
            "pab.parallel splits only `pipeline.transformer`: run this model with sp_degree=1 and cfg_degree=1"
        )
    adapter = adapter_for(transformer)
    if adapter.name not in _INSTALLERS:
        raise ParallelConfigError(
            f"sequence parallel supports {sorted(_INSTALLERS)}, not {adapter.name!r}; run it with sp_degree=1"
        )
    groups = groups if groups is not None else build_groups(config)
    strategy = config.resolve_strategy(adapter.sp_strategy)
    handle = ParallelHandle(config, groups, adapter.name, strategy, transformer)
    try:
        if config.sp_degree > 1:
            _INSTALLERS[adapter.name](handle, adapter)
        if config.cfg_degree > 1:
            _install_cfg(handle, adapter, pipeline)
    except BaseException:
        handle.remove()
        raise
    transformer._pab_parallel = handle
    return handle


def _install_cfg(handle: ParallelHandle, adapter: ModelAdapter, pipeline: Any) -> None:
    group = handle.groups.cfg_group
    if not adapter.two_pass_cfg:
        _register(handle.transformer, BatchCFGHook(group, BATCH_ARGS[adapter.name]), CFG_HOOK, handle._undo)
        return
    if pipeline is None or not hasattr(pipeline, "encode_prompt"):
        raise ParallelConfigError(
            f"cfg_degree=2 for {adapter.name} (CFG as two forwards) needs the pipeline, not only its transformer: "
            f"pass the pipeline to apply_parallel",
            "cfg_degree",
        )

    def cfg_active() -> bool:
        return bool(getattr(pipeline, "do_classifier_free_guidance", False))

    if handle.groups.cfg_rank == 1:
        handle._undo.append(swap_prompt_embeddings(pipeline))
    _register(handle.transformer, TwoPassCFGHook(group, cfg_active), CFG_HOOK, handle._undo)
