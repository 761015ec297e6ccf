"""`apply_parallel`: one entry point that shards a pipeline's transformer forward over a replica's processes.

Every rank runs the same pipeline loop (text encoding, scheduler, VAE) with the same seed; only the transformer
forward is split (each expert's, for a two-expert Wan 2.2 pipeline). Apply this BEFORE `pab.hooks.apply_pab`, so that
PAB's hooks wrap the parallel attention (a broadcast then skips its collectives) and PAB's root scope books the
input/output collectives as "other".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry

from ..adapters import ModelAdapter, adapter_for, pipeline_transformers
from .attention import DSPTemporalProcessor, UlyssesAttnProcessor
from .cfg import BatchCFGHook, TwoPassCFGHook, swap_prompt_embeddings
from .config import ParallelConfig, ParallelConfigError
from .diffusers_cp import enable_diffusers_ulysses
from .groups import ParallelGroups, build_groups
from .layout import check_latents, request_latent_shape
from .support import check_supported
from .sharding import GatherOutputHook, LatteFrameShardHook, ShapeCheckHook, TextVideoShardHook, TokenLayout

SP_HOOK = "pab_parallel_sp"
CFG_HOOK = "pab_parallel_cfg"
CHECK_HOOK = "pab_parallel_check"

BATCH_ARGS: dict[str, tuple[str, ...]] = {
    "latte": ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"),
    "cogvideox": ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"),
    "allegro": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"),
    "mochi": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"),
    "ltx-video": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask", "video_coords"),
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
    experts: tuple[torch.nn.Module, ...] = ()
    """Every denoising transformer split (the first is `transformer`; Wan 2.2 adds `transformer_2`)."""
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def rank(self) -> int:
        return self.groups.rank

    def validate_latents(self, latent_shape: tuple[int, ...]) -> None:
        """Raise `ParallelConfigError` (naming the request field) when this latent video cannot be split."""
        check_latents(self.model, self.strategy, self.transformer, self.config.sp_degree, latent_shape)

    def validate_request(self, pipeline: Any, num_frames: int, height: int, width: int) -> None:
        """Request-time check of an output size (pixels) against the split; same rules as each forward applies."""
        self.validate_latents(request_latent_shape(self.model, pipeline, self.transformer, num_frames, height, width))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()
        for transformer in self.experts or (self.transformer,):
            HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
            if getattr(transformer, "_pab_parallel", None) is self:
                del transformer._pab_parallel


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


def _install_latte(handle: ParallelHandle, adapter: ModelAdapter, transformer: torch.nn.Module) -> None:
    group, n = handle.groups.sp_group, handle.config.sp_degree
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


def _install_cogvideox(handle: ParallelHandle, adapter: ModelAdapter, transformer: torch.nn.Module) -> None:
    group, n = handle.groups.sp_group, handle.config.sp_degree
    spatial = _attention_modules(adapter, transformer, "spatial")
    for name, module in spatial:
        UlyssesAttnProcessor.check_module(module, name, n)
    layout = TokenLayout()  # video tokens of the forward in flight, padded to a multiple of sp_degree
    for name, module in spatial:
        _swap_processor(module, UlyssesAttnProcessor(group, seq_dim=1, joint_text=True, layout=layout), handle._undo)
    _register(transformer.patch_embed, TextVideoShardHook(group, layout), SP_HOOK, handle._undo)
    _register(transformer.proj_out, GatherOutputHook(group, dim=1, layout=layout), SP_HOOK, handle._undo)


def _install_diffusers_cp(handle: ParallelHandle, adapter: ModelAdapter, transformer: torch.nn.Module) -> None:
    """Wan and LTX-Video: Ulysses through diffusers' context-parallel plan (see `diffusers_cp`)."""
    n, heads = handle.config.sp_degree, transformer.config.num_attention_heads
    if heads % n:
        raise ParallelConfigError(
            f"{adapter.name} has {heads} attention heads, not divisible by sp_degree={n}; use an sp_degree "
            f"dividing {heads}",
            "sp_degree",
        )
    local = [module for _, module in _attention_modules(adapter, transformer, "cross")]
    handle._undo.append(enable_diffusers_ulysses(transformer, handle.groups, local_attention=local))

    def check(latents: torch.Tensor) -> None:
        check_latents(adapter.name, "ulysses", transformer, n, tuple(latents.shape))

    # Outermost on the root, so a bad shape raises our clear error before diffusers' split hook asserts.
    _register(transformer, ShapeCheckHook(check), CHECK_HOOK, handle._undo)


_INSTALLERS: dict[str, Callable[[ParallelHandle, ModelAdapter, torch.nn.Module], None]] = {
    "latte": _install_latte,
    "cogvideox": _install_cogvideox,
    "wan": _install_diffusers_cp,
    "ltx-video": _install_diffusers_cp,
}


def apply_parallel(target: Any, config: ParallelConfig, groups: ParallelGroups | None = None) -> ParallelHandle:
    r"""
    Split every forward of a pipeline's transformer(s) over the processes of this replica.

    Args:
        target: a diffusers pipeline (needed for CFG parallel of two-pass pipelines such as Wan, and for the second
            expert of Wan 2.2) or its transformer.
        config: the degrees and scheme; `sp_degree * cfg_degree` must equal the world size.
        groups: from `build_groups(config)`; built here when omitted (every rank must call this together).
    """
    if not isinstance(config, ParallelConfig):
        raise ParallelConfigError(f"config must be a ParallelConfig, got {type(config).__name__}")
    pipeline = target if hasattr(target, "transformer") else None
    experts = tuple(t for _, t in pipeline_transformers(pipeline)) if pipeline is not None else (target,)
    for transformer in experts:
        if getattr(transformer, "_pab_handle", None) is not None:
            raise ParallelConfigError(
                "PAB is already applied to this transformer: apply parallel first, then PAB, so a broadcast skips the "
                "collectives (remove the PAB handle and apply it again after apply_parallel)"
            )
        if getattr(transformer, "_pab_parallel", None) is not None:
            raise ParallelConfigError("parallel is already applied to this transformer; call handle.remove() first")
    adapter = adapter_for(experts[0])
    strategy = config.resolve_strategy(adapter.sp_strategy)
    check_supported(adapter, config)
    groups = groups if groups is not None else build_groups(config)
    handle = ParallelHandle(config, groups, adapter.name, strategy, experts[0], experts)
    try:
        for transformer in experts:
            if config.sp_degree > 1:
                _INSTALLERS[adapter.name](handle, adapter, transformer)
            if config.cfg_degree > 1:
                _install_cfg(handle, adapter, pipeline, transformer)
        if config.cfg_degree > 1 and adapter.two_pass_cfg and handle.groups.cfg_rank == 1:
            handle._undo.append(swap_prompt_embeddings(pipeline))  # once per pipeline, whatever the experts
    except BaseException:
        handle.remove()
        raise
    for transformer in experts:
        transformer._pab_parallel = handle
    return handle


def _install_cfg(handle: ParallelHandle, adapter: ModelAdapter, pipeline: Any, transformer: torch.nn.Module) -> None:
    group = handle.groups.cfg_group
    if not adapter.two_pass_cfg:
        _register(transformer, BatchCFGHook(group, BATCH_ARGS[adapter.name]), CFG_HOOK, handle._undo)
        return
    if pipeline is None or not hasattr(pipeline, "encode_prompt"):
        raise ParallelConfigError(
            f"cfg_degree=2 for {adapter.name} (CFG as two forwards) needs the pipeline, not only its transformer: "
            f"pass the pipeline to apply_parallel",
            "cfg_degree",
        )

    def cfg_active() -> bool:
        return bool(getattr(pipeline, "do_classifier_free_guidance", False))

    _register(transformer, TwoPassCFGHook(group, cfg_active), CFG_HOOK, handle._undo)
