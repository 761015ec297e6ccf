"""Hooks that split a transformer's input over the sequence-parallel ranks and gather its output once at the end."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from .comm import all_gather, shard


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


@dataclass
class TokenLayout:
    """The video token count of the forward in flight, before and after padding to a multiple of the ranks."""

    valid: int = 0
    padded: int = 0

    @property
    def padding(self) -> int:
        return self.padded - self.valid


class TextVideoShardHook(ModelHook):
    r"""
    On CogVideoX's patch embedding: keep every text token, keep this rank's slice of the video tokens.

    A video token count that does not divide by the ranks is padded at the end with zero tokens; the attention masks
    them out as keys (`UlyssesAttnProcessor`), and the output gather drops them (`GatherOutputHook`).
    """

    def __init__(self, group: dist.ProcessGroup, layout: TokenLayout) -> None:
        super().__init__()
        self.group = group
        self.layout = layout

    def new_forward(self, module: torch.nn.Module, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        out = self.fn_ref.original_forward(text_embeds, image_embeds)
        text_len = text_embeds.shape[1]
        video = out[:, text_len:]
        n = dist.get_world_size(self.group)
        self.layout.valid = video.shape[1]
        self.layout.padded = -(-video.shape[1] // n) * n
        if self.layout.padding:
            video = F.pad(video, (0, 0, 0, self.layout.padding))
        return torch.cat([out[:, :text_len], shard(video, 1, self.group)], dim=1)


class GatherOutputHook(ModelHook):
    """After the last per-token layer: all-gather the sequence-sharded tokens (once per forward), minus padding."""

    def __init__(self, group: dist.ProcessGroup, dim: int, layout: TokenLayout | None = None) -> None:
        super().__init__()
        self.group = group
        self.dim = dim
        self.layout = layout

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        gathered = all_gather(output, dim=self.dim, group=self.group)
        if self.layout is not None and self.layout.padding:
            gathered = gathered.narrow(self.dim, 0, self.layout.valid)
        return gathered


class ShapeCheckHook(ModelHook):
    """Root hook: validate the latent input before any collective, identically on every rank."""

    def __init__(self, check: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.check = check

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.check(BoundCall(module, args, kwargs).get("hidden_states"))
        return args, kwargs

