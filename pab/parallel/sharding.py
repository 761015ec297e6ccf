"""Hooks that split a transformer's input over the sequence-parallel ranks and gather its output once at the end."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.distributed as dist
from diffusers.hooks import ModelHook

from .comm import all_gather, shard
from .config import ParallelConfigError


class BoundCall:
    """A module call's arguments by parameter name, so hooks can read and replace them however they were passed."""

    def __init__(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)

    def get(self, name: str) -> Any:
        return self._bound.arguments.get(name)

    def set(self, name: str, value: Any) -> None:
        self._bound.arguments[name] = value

    def call(self, fn: Callable[..., Any]) -> Any:
        return fn(*self._bound.args[1:], **self._bound.kwargs)


def map_sample(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to a transformer output's sample, whether returned as a tuple or as a `Transformer2DModelOutput`."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    return type(output)(sample=fn(output.sample))


def first_sample(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output[0] if isinstance(output, tuple) else output.sample


class LatteFrameShardHook(ModelHook):
    r"""
    Root hook for Latte: this rank's frames in, all frames out.

    Latte adds `temp_pos_embed` (one row per frame) at the first temporal block; during the sharded forward the buffer
    is swapped for this rank's rows. Spatial and cross attention then run on whole frames with no communication.
    """

    def __init__(self, group: dist.ProcessGroup, check: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.group = group
        self.check = check

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        call = BoundCall(module, args, kwargs)
        hidden_states = call.get("hidden_states")
        self.check(hidden_states)
        call.set("hidden_states", shard(hidden_states, 2, self.group))
        full_pos = module.temp_pos_embed
        module.temp_pos_embed = shard(full_pos, 1, self.group)
        try:
            output = call.call(self.fn_ref.original_forward)
        finally:
            module.temp_pos_embed = full_pos
        return map_sample(output, lambda x: all_gather(x, dim=2, group=self.group))


class TextVideoShardHook(ModelHook):
    """On CogVideoX's patch embedding: keep every text token, keep this rank's slice of the video tokens."""

    def __init__(self, group: dist.ProcessGroup, check: Callable[[int], None]) -> None:
        super().__init__()
        self.group = group
        self.check = check

    def new_forward(self, module: torch.nn.Module, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        out = self.fn_ref.original_forward(text_embeds, image_embeds)
        text_len = text_embeds.shape[1]
        self.check(out.shape[1] - text_len)
        return torch.cat([out[:, :text_len], shard(out[:, text_len:], 1, self.group)], dim=1)


class GatherOutputHook(ModelHook):
    """After the last per-token layer: all-gather the sequence-sharded tokens (once per forward)."""

    def __init__(self, group: dist.ProcessGroup, dim: int) -> None:
        super().__init__()
        self.group = group
        self.dim = dim

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        return all_gather(output, dim=self.dim, group=self.group)


class ShapeCheckHook(ModelHook):
    """Root hook: validate the latent input before any collective, identically on every rank."""

    def __init__(self, check: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.check = check

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.check(BoundCall(module, args, kwargs).get("hidden_states"))
        return args, kwargs


def require_divisible(value: int, n: int, what: str, field: str, advice: str) -> None:
    if value % n:
        raise ParallelConfigError(f"{what} = {value} is not divisible by sp_degree = {n}; {advice}", field)
