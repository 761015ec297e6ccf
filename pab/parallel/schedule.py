"""The analytic communication count: what each rank must send in one generation, derived from the model config,
the latent shape, the degrees and the PAB schedule, without running anything.

Tests and the benchmark compare it with what `pab.stats` recorded, byte for byte. Bytes are those a rank sends to
others (see `pab.parallel.comm`); every rank of a replica sends the same amount.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Sequence

import torch

from ..adapters import MLP_KIND, adapter_for
from ..config import PABConfig
from ..stats import OTHER_KIND, PABStats
from .comm import ALL_GATHER, ALL_TO_ALL
from .config import ParallelConfig
from .layout import CHANNEL_DIM, video_tokens

Collective = tuple[str, int]  # (op, bytes sent by this rank)


def _a2a(elements: int, n: int, elem: int) -> Collective:
    return (ALL_TO_ALL, elements * elem * (n - 1) // n)


def _gather(elements: int, n: int, elem: int) -> Collective:
    return (ALL_GATHER, elements * elem * (n - 1))


@dataclass
class ForwardComm:
    r"""
    Collectives of one computing transformer forward on one rank.

    Args:
        per_module: per attention kind, the collectives one computed module of that kind issues.
        modules: per attention kind, how many modules of that kind one forward calls.
        other: collectives outside attention modules (output gathers), every forward.
        passes: computing forwards per denoising step on this rank, by CFG pass name.
    """

    per_module: dict[str, list[Collective]] = field(default_factory=dict)
    modules: dict[str, int] = field(default_factory=dict)
    other: list[Collective] = field(default_factory=list)
    passes: tuple[str, ...] = ("default",)


def forward_comm(
    transformer: torch.nn.Module,
    config: ParallelConfig,
    latent_shape: Sequence[int],
    *,
    text_len: int = 0,
    cfg_on: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ForwardComm:
    r"""
    What one computing forward sends, per attention kind and outside attention, on one rank of `config`.

    Args:
        transformer: the (unsharded) transformer; its adapter and config give kinds, module counts, heads, channels.
        config: the degrees and scheme.
        latent_shape: the transformer input as the pipeline passes it (batch includes both CFG halves when batched).
        text_len: text tokens (CogVideoX's joint attention gathers their output over heads).
        cfg_on: whether this generation uses CFG (two-pass pipelines exchange passes only then).
        dtype: the activations' dtype (bytes per element).
    """
    adapter = adapter_for(transformer)
    model, n, m = adapter.name, config.sp_degree, config.cfg_degree
    strategy = config.resolve_strategy(adapter.sp_strategy)
    elem = torch.empty((), dtype=dtype).element_size()
    tconf = transformer.config
    channels = tconf.num_attention_heads * tconf.attention_head_dim
    out_channels = tconf.out_channels or tconf.in_channels
    batch = latent_shape[0]
    frames, per_frame = video_tokens(model, transformer, tuple(latent_shape))
    modules: dict[str, int] = {}
    for _, kind, _, _ in adapter.iter_modules(transformer):
        if kind != MLP_KIND:
            modules[kind] = modules.get(kind, 0) + 1
    result = ForwardComm(modules=modules)

    two_pass = adapter.two_pass_cfg
    local_batch = batch // m if (m > 1 and not two_pass and batch % m == 0) else batch
    if two_pass and cfg_on:
        result.passes = ("cond",) if m > 1 else ("cond", "uncond")
    elif two_pass:
        result.passes = ("cond",)

    channel_dim = CHANNEL_DIM.get(model, 1)
    output_elements = local_batch * out_channels * prod(latent_shape[1:]) // latent_shape[channel_dim]

    if n > 1:
        _add_sequence_parallel(result, model, strategy, n, elem, channels=channels, batch=local_batch,
                               tokens=(frames, per_frame), text_len=text_len, output_elements=output_elements)
    if m > 1 and (two_pass and cfg_on or not two_pass and batch % m == 0):
        result.other.append(_gather(output_elements, m, elem))
    return result


def _add_sequence_parallel(result: ForwardComm, model: str, strategy: str, n: int, elem: int, *, channels: int,
                           batch: int, tokens: tuple[int, int], text_len: int, output_elements: int) -> None:
    """The collectives of the sequence split itself: inside the attention modules, and the output gather."""
    frames, per_frame = tokens
    if model == "latte":
        local_tokens = batch * frames * per_frame // n
        if strategy == "dsp":
            result.per_module["temporal"] = [_a2a(local_tokens * channels, n, elem)] * 2
        else:
            result.per_module["spatial"] = [_a2a(local_tokens * channels, n, elem)] * 4
            result.per_module["temporal"] = [_a2a(local_tokens * channels, n, elem)] * 4
        result.other.append(_gather(output_elements // n, n, elem))
        return
    video = frames * per_frame
    padded = -(-video // n) * n if model == "cogvideox" else video  # CogVideoX pads tokens to fit the ranks
    attention = [_a2a(batch * padded // n * channels, n, elem)] * 4
    if model == "cogvideox":
        attention.append(_gather(batch * text_len * channels // n, n, elem))
    result.per_module["spatial"] = attention  # cross-attention runs locally (text whole on every rank)
    out_per_token = output_elements // (batch * video)
    result.other.append(_gather(batch * padded // n * out_per_token, n, elem))


def predict_stats(comm: ForwardComm, timesteps: Sequence[float], pab: PABConfig | None = None,
                  boundary: float | None = None) -> PABStats:
    """The issued and skipped collectives of one generation, booked like `pab.hooks` books them.

    With a two-expert pipeline (Wan 2.2), `boundary` is the timestep at which it switches from the first expert
    (t >= boundary) to the second; both experts have the same layout (`comm`) and each counts its own steps.
    """
    pab = pab or PABConfig.disabled()
    stats = PABStats(preset=pab.name)
    experts: dict[bool, int] = {}
    steps = []  # each step's counter within its expert
    for timestep in timesteps:
        first = boundary is None or timestep >= boundary
        steps.append(experts.setdefault(first, 0))
        experts[first] += 1
    for pass_name in comm.passes:
        for step, timestep in zip(steps, timesteps):
            for op, nbytes in comm.other:
                stats.book_issued(OTHER_KIND, op, nbytes)
            for kind, count in comm.modules.items():
                rule = pab.rule_for(kind)
                # The module's counter equals the step index; step 0 computes (0 % range == 0) and fills the cache.
                broadcast = rule is not None and rule.range > 1 and rule.broadcasts(step, float(timestep))
                book = stats.book_skipped if broadcast else stats.book_issued
                for _ in range(count):
                    for op, nbytes in comm.per_module.get(kind, []):
                        book(kind, op, nbytes)
    return stats
