"""Which module of each supported transformer is spatial, temporal or cross attention, and which is its MLP.

Names are matched with anchored regular expressions against `named_modules()` paths, so a temporal block's
`temporal_transformer_blocks.0.attn1` can never be mistaken for the spatial `transformer_blocks.0.attn1`
(diffusers' own PAB matches unanchored substrings and gives Latte's temporal attention the spatial range).
Torch-free: it only reads class names and module paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal

from .config import ATTENTION_KINDS

if TYPE_CHECKING:  # annotations only: the adapter table stays torch-free, so `pab.presets` (which serving processes
    import torch  # import to check preset names) can use it at module level

MLP_KIND = "mlp"
_BLOCK = r"(?P<block>\d+)"


class UnsupportedModelError(ValueError):
    """The transformer has no adapter; the message lists the supported ones and the generic opt-in."""


@dataclass(frozen=True)
class ModelAdapter:
    r"""
    How PAB and sequence parallelism see one transformer class.

    Args:
        name (`str`): Short model name used in presets, metrics and errors.
        transformer_classes (`tuple[str, ...]`): Class names of the diffusers transformers it describes.
        patterns (`dict[str, tuple[str, ...]]`): Per kind (spatial, temporal, cross, mlp), full-match regexes of
            module paths; each must capture the block index as `(?P<block>\d+)`.
        two_pass_cfg (`bool`): The pipeline runs CFG as two forwards per step (cond, uncond), each needing its own cache.
        reference (`str`): Key of the paper's reference defaults in `pab.presets.REFERENCE_DEFAULTS`.
        sp_strategy (`str`): Sequence-parallel scheme that fits the attention layout: "dsp" or "ulysses".
        pipeline_class (`str`): The diffusers pipeline class that drives this transformer.
        timestep_reversed (`bool`): The transformer's `timestep` argument rises during denoising (Mochi: it is
            1000 minus the noise level). PAB's windows and its new-generation rule are on the noise level, so the
            hooks must read `TIMESTEP_SCALE - timestep` for such a model.
    """

    name: str
    transformer_classes: tuple[str, ...]
    patterns: dict[str, tuple[str, ...]]
    two_pass_cfg: bool = False
    reference: str = "cogvideox"
    sp_strategy: Literal["dsp", "ulysses"] = "ulysses"
    pipeline_class: str = ""
    timestep_reversed: bool = False
    _compiled: dict[str, tuple[re.Pattern[str], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.patterns) - {*ATTENTION_KINDS, MLP_KIND}
        if unknown:
            raise ValueError(f"adapter {self.name!r}: unknown kinds {sorted(unknown)}")
        object.__setattr__(
            self, "_compiled", {k: tuple(re.compile(p) for p in ps) for k, ps in self.patterns.items()}
        )

    def classify(self, module_name: str) -> tuple[str, int] | None:
        """Return (kind, block index) for a module path, or None when PAB leaves the module alone."""
        for kind, regexes in self._compiled.items():
            for regex in regexes:
                match = regex.fullmatch(module_name)
                if match:
                    return kind, int(match.groupdict().get("block") or 0)
        return None

    def iter_modules(self, transformer: torch.nn.Module) -> Iterator[tuple[str, str, int, torch.nn.Module]]:
        """Yield (name, kind, block, module) for every module this adapter classifies."""
        for name, module in transformer.named_modules():
            hit = self.classify(name)
            if hit is not None:
                yield name, hit[0], hit[1], module


def _attn(*paths: str) -> tuple[str, ...]:
    """Turn readable paths like "blocks.{i}.attn1" into full-match regexes capturing the block index."""
    return tuple(_BLOCK.join(re.escape(part) for part in p.split("{i}")) for p in paths)


ADAPTERS: dict[str, ModelAdapter] = {
    a.name: a
    for a in (
        ModelAdapter(
            name="latte",
            transformer_classes=("LatteTransformer3DModel",),
            patterns={
                "spatial": _attn("transformer_blocks.{i}.attn1"),
                "temporal": _attn("temporal_transformer_blocks.{i}.attn1"),
                "cross": _attn("transformer_blocks.{i}.attn2"),
                "mlp": _attn("transformer_blocks.{i}.ff", "temporal_transformer_blocks.{i}.ff"),
            },
            reference="latte",
            sp_strategy="dsp",
            pipeline_class="LattePipeline",
        ),
        ModelAdapter(
            name="cogvideox",
            transformer_classes=("CogVideoXTransformer3DModel",),
            patterns={"spatial": _attn("transformer_blocks.{i}.attn1"), "mlp": _attn("transformer_blocks.{i}.ff")},
            reference="cogvideox",
            pipeline_class="CogVideoXPipeline",
        ),
        ModelAdapter(
            name="wan",
            transformer_classes=("WanTransformer3DModel",),
            patterns={
                "spatial": _attn("blocks.{i}.attn1"),
                "cross": _attn("blocks.{i}.attn2"),
                "mlp": _attn("blocks.{i}.ffn"),
            },
            two_pass_cfg=True,
            reference="opensora-plan-v1.2",
            pipeline_class="WanPipeline",
        ),
        ModelAdapter(
            name="hunyuanvideo",
            transformer_classes=("HunyuanVideoTransformer3DModel",),
            # dual-stream and single-stream blocks both attend jointly over video + text tokens; `ff` is the dual
            # blocks' video MLP (the single blocks' MLP runs in parallel with attention, inside one projection)
            patterns={
                "spatial": _attn("transformer_blocks.{i}.attn", "single_transformer_blocks.{i}.attn"),
                "mlp": _attn("transformer_blocks.{i}.ff"),
            },
            two_pass_cfg=True,
            reference="cogvideox",
            pipeline_class="HunyuanVideoPipeline",
        ),
        ModelAdapter(
            name="allegro",
            transformer_classes=("AllegroTransformer3DModel",),
            patterns={
                "spatial": _attn("transformer_blocks.{i}.attn1"),
                "cross": _attn("transformer_blocks.{i}.attn2"),
                "mlp": _attn("transformer_blocks.{i}.ff"),
            },
            reference="allegro",
            pipeline_class="AllegroPipeline",
        ),
        ModelAdapter(
            name="mochi",
            transformer_classes=("MochiTransformer3DModel",),
            # attn1 is the joint (video + text) attention; `ff` is the video stream's MLP (`ff_context` is text's)
            patterns={"spatial": _attn("transformer_blocks.{i}.attn1"), "mlp": _attn("transformer_blocks.{i}.ff")},
            reference="cogvideox",
            pipeline_class="MochiPipeline",
            timestep_reversed=True,
        ),
        ModelAdapter(
            name="ltx-video",
            transformer_classes=("LTXVideoTransformer3DModel",),
            patterns={
                "spatial": _attn("transformer_blocks.{i}.attn1"),
                "cross": _attn("transformer_blocks.{i}.attn2"),
                "mlp": _attn("transformer_blocks.{i}.ff"),
            },
            reference="opensora-plan-v1.2",
            pipeline_class="LTXPipeline",
        ),
    )
}


EXPERT_ATTRS: tuple[str, ...] = ("transformer", "transformer_2")
"""Pipeline attributes holding denoising transformers; Wan 2.2 A14B switches from the first (high noise) to the
second (low noise) at `boundary_ratio`, and each expert needs its own hooks and caches."""


def pipeline_transformers(pipeline: Any) -> list[tuple[str, torch.nn.Module]]:
    """(attribute, transformer) for every denoising expert a pipeline holds, in the order it uses them."""
    experts = [(attr, getattr(pipeline, attr, None)) for attr in EXPERT_ATTRS]
    return [(attr, module) for attr, module in experts if module is not None]


def get_adapter(name: str) -> ModelAdapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown model adapter {name!r}; supported: {sorted(ADAPTERS)}") from None


def adapter_for(transformer: torch.nn.Module) -> ModelAdapter:
    """Find the adapter for a transformer instance by its class name."""
    cls_name = type(transformer).__name__
    for adapter in ADAPTERS.values():
        if cls_name in adapter.transformer_classes:
            return adapter
    supported = ", ".join(f"{a.name} ({'/'.join(a.transformer_classes)})" for a in ADAPTERS.values())
    raise UnsupportedModelError(
        f"PAB has no adapter for {cls_name}. Supported: {supported}. For another model, pass "
        f"adapter=generic_adapter(spatial=[...], temporal=[...], cross=[...]) with full-match regexes of its "
        f"attention module paths (block index as (?P<block>\\d+))."
    )


def generic_adapter(
    name: str = "generic",
    *,
    spatial: tuple[str, ...] | list[str] = (),
    temporal: tuple[str, ...] | list[str] = (),
    cross: tuple[str, ...] | list[str] = (),
    mlp: tuple[str, ...] | list[str] = (),
    two_pass_cfg: bool = False,
    reference: str = "cogvideox",
) -> ModelAdapter:
    """An explicit opt-in mapping for a transformer without a built-in adapter (full-match regexes)."""
    patterns = {k: tuple(v) for k, v in {"spatial": spatial, "temporal": temporal, "cross": cross, "mlp": mlp}.items() if v}
    if not patterns:
        raise UnsupportedModelError("generic_adapter needs at least one module pattern (spatial, temporal, cross or mlp)")
    return ModelAdapter(name=name, transformer_classes=(), patterns=patterns, two_pass_cfg=two_pass_cfg, reference=reference)
