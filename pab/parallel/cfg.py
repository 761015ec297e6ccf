"""CFG parallel: the conditional and unconditional passes of a step run on different ranks (cfg_degree = 2).

Batched pipelines (Latte, CogVideoX) call the transformer once on `[uncond; cond]`: each CFG rank takes its half of
the batch and the halves are all-gathered. Two-pass pipelines (Wan) call it twice per step, under
`cache_context("cond")` then `("uncond")`: CFG rank 1 encodes its prompts swapped, so at the "cond" call rank 0
computes the conditional pass while rank 1 computes the unconditional one; the two results are exchanged, the "cond"
call returns rank 0's and the "uncond" call returns rank 1's without computing anything.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .comm import all_gather
from .config import ParallelConfigError
from .sharding import BoundCall, first_sample, map_sample


class BatchCFGHook(ModelHook):
    """Root hook: this CFG rank's half of the batch in, the whole batch out."""

    def __init__(self, group: dist.ProcessGroup, batch_args: tuple[str, ...]) -> None:
        super().__init__()
        self.group = group
        self.batch_args = batch_args

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = BoundCall(module, args, kwargs)
        batch = call.get("hidden_states").shape[0]
        n, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        if batch % n:  # CFG off (batch 1): every CFG rank computes the same thing, nothing to exchange
            return call.call(self.fn_ref.original_forward)
        for name in self.batch_args:
            value = call.get(name)
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
                call.set(name, value.chunk(n)[rank])
        output = call.call(self.fn_ref.original_forward)
        return map_sample(output, lambda x: all_gather(x, dim=0, group=self.group))


class _ContextName(BaseState):
    """diffusers' `cache_context` sets the pass name on every StateManager of a stateful hook; no state is kept."""

    def reset(self) -> None:
        pass


class TwoPassCFGHook(ModelHook):
    """Root hook for pipelines that run CFG as a "cond" and an "uncond" forward (see the module docstring)."""

    _is_stateful = True

    def __init__(self, group: dist.ProcessGroup, cfg_active: Callable[[], bool]) -> None:
        super().__init__()
        self.group = group
        self.cfg_active = cfg_active
        self.context = StateManager(_ContextName)
        self._pending: tuple[Any, torch.Tensor] | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not self.cfg_active():
            return self.fn_ref.original_forward(*args, **kwargs)
        context = self.context._context
        name = context.name if context is not None else None
        if name == "cond":
            output = self.fn_ref.original_forward(*args, **kwargs)
            both = all_gather(first_sample(output).unsqueeze(0), dim=0, group=self.group)
            self._pending = (output, both[1])
            return map_sample(output, lambda _: both[0])
        if name == "uncond":
            if self._pending is None:
                raise RuntimeError("CFG parallel: an 'uncond' forward came without the 'cond' forward of its step")
            template, uncond = self._pending
            self._pending = None
            return map_sample(template, lambda _: uncond)
        raise ParallelConfigError(
            f"CFG parallel for a two-pass pipeline needs the transformer called under cache_context('cond') and "
            f"cache_context('uncond'); got context {name!r}. Use cfg_degree=1 for this pipeline.",
            "cfg_degree",
        )

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._pending = None
        return module


def swap_prompt_embeddings(pipeline: Any) -> Callable[[], None]:
    """On CFG rank 1: make `pipeline.encode_prompt` return (negative, positive) when CFG is on. Returns the undo."""
    original = pipeline.encode_prompt

    def encode_prompt(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        positive, negative = original(*args, **kwargs)
        if kwargs.get("do_classifier_free_guidance", True) and negative is not None:
            return negative, positive
        return positive, negative

    pipeline.encode_prompt = encode_prompt

    def undo() -> None:
        del pipeline.encode_prompt

    return undo
