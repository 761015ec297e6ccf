"""Named PAB settings: the paper's pyramids (PAB-246/357/579) and the reference defaults per model (PAPER.md)."""

from __future__ import annotations

from typing import Any

from .adapters import get_adapter
from .config import ATTENTION_KINDS, BroadcastRule, MLPBroadcastRule, PABConfig, PABConfigError


def _rules(window: tuple[float, float], spatial: int | None, temporal: int | None, cross: int | None) -> dict[str, Any]:
    ranges = {"spatial": spatial, "temporal": temporal, "cross": cross}
    return {k: None if r is None else BroadcastRule(range=r, window=window) for k, r in ranges.items()}


# VideoSys reference defaults (PAPER.md, "Reference defaults"; VideoSys' per-pipeline `*PABConfig` classes): model
# family -> PABConfig. docs/MODELS.md says which adapter uses which, and which of those borrow another family's.
REFERENCE_DEFAULTS: dict[str, PABConfig] = {
    "opensora": PABConfig(
        **_rules((450, 930), 2, 4, 6),
        mlp=MLPBroadcastRule(blocks=tuple(range(5)), timesteps=(676, 788, 864), range=2),
        name="reference:opensora",
    ),
    "latte": PABConfig(
        **_rules((100, 800), 2, 3, 6),
        mlp=MLPBroadcastRule(blocks=tuple(range(5)), timesteps=(720, 640, 560, 480, 400), range=2),
        name="reference:latte",
    ),
    "opensora-plan-v1.1": PABConfig(
        **_rules((100, 850), 2, 4, 6),
        mlp=MLPBroadcastRule(blocks=tuple(range(7)), timesteps=tuple(range(738, 425, -24)), range=2),
        name="reference:opensora-plan-v1.1",
    ),
    "opensora-plan-v1.2": PABConfig(**_rules((100, 850), 2, None, 6), name="reference:opensora-plan-v1.2"),
    "cogvideox": PABConfig(**_rules((100, 850), 2, None, None), name="reference:cogvideox"),
    # VideoSys `AllegroPABConfig` (videosys/pipelines/allegro/pipeline_allegro.py): Open-Sora-Plan v1.1's values
    "allegro": PABConfig(
        **_rules((100, 850), 2, 4, 6),
        mlp=MLPBroadcastRule(blocks=tuple(range(7)), timesteps=tuple(range(738, 425, -24)), range=2),
        name="reference:allegro",
    ),
    "vchitect": PABConfig(**_rules((100, 800), 2, 4, 6), name="reference:vchitect"),
}

PYRAMIDS: dict[str, tuple[int, int, int]] = {
    "PAB-246": (2, 4, 6), "PAB-357": (3, 5, 7), "PAB-579": (5, 7, 9), "PAB-333": (3, 3, 3),
}
"""Ranges spatial/temporal/cross. PAB-333 is flat: every kind computes on the same steps, so a forecast (suffix `f`)
extrapolates from outputs computed together - on tiny-shapes that is where forecasting pays (QUALITY.md)."""
STEP_RANGES: dict[str, int] = {"step2": 2, "step3": 3, "step4": 4}
"""Step-level presets: the whole transformer output is broadcast `range - 1` of every `range` forwards in the window."""
MLP_SUFFIX = "+mlp"
FORECAST_SUFFIXES: dict[str, int] = {"f": 1, "f2": 2}
"""`PAB-246f`, `step3f`: broadcasts forecast linearly (`f`) or quadratically (`f2`) instead of reusing."""
PRESET_NAMES: tuple[str, ...] = (
    "none", *PYRAMIDS, "reference", *(f"{p}f" for p in PYRAMIDS), *STEP_RANGES, *(f"{s}f" for s in STEP_RANGES)
)
"""Preset names; pyramids and step presets may end in `f` or `f2` (forecast order), pyramids then in `+mlp` (the
model's reference MLP broadcast)."""

DEFAULT_WINDOW = (100.0, 800.0)


def reference_family(model: Any) -> str:
    """Resolve a model family key, an adapter name or a `ModelAdapter` to a key of `REFERENCE_DEFAULTS`."""
    if model is None:
        return "latte"
    if isinstance(model, str) and model in REFERENCE_DEFAULTS:
        return model
    adapter = model if hasattr(model, "reference") else get_adapter(str(model))
    return adapter.reference


def _split_name(name: str) -> tuple[str, int, bool]:
    """'PAB-246f2+mlp' -> ('PAB-246', 2, True)."""
    base, with_mlp = (name[: -len(MLP_SUFFIX)], True) if name.endswith(MLP_SUFFIX) else (name, False)
    for suffix, order in sorted(FORECAST_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        stem = base[: -len(suffix)]
        if base.endswith(suffix) and (stem in PYRAMIDS or stem in STEP_RANGES):
            return stem, order, with_mlp
    return base, 0, with_mlp


def get_preset(name: str, model: Any = None) -> PABConfig:
    """
    Return the named preset for `model` (an adapter name such as "latte", a reference family, or a `ModelAdapter`).

    Pyramids take their windows from the model's reference default, so "PAB-246" on Open-Sora broadcasts inside
    (450, 930) and on Latte inside (100, 800). Kinds the model lacks are simply never matched by its adapter. Step
    presets ("step3f") use the same window for the step rule and leave the per-kind rules off.
    """
    if not isinstance(name, str):
        raise PABConfigError(f"preset must be a string, one of {list(PRESET_NAMES)}")
    family = reference_family(model)
    reference = REFERENCE_DEFAULTS[family]
    if name == "none":
        return PABConfig.disabled()
    if name == "reference":
        return reference
    base, order, with_mlp = _split_name(name)
    if base not in PYRAMIDS and (base not in STEP_RANGES or with_mlp):
        raise PABConfigError(
            f"unknown preset {name!r}; choose one of {list(PRESET_NAMES)} ('f2' also works where 'f' does; "
            f"pyramids may add '{MLP_SUFFIX}')"
        )
    if with_mlp and reference.mlp is None:
        raise PABConfigError(f"preset {name!r}: the {family} reference defines no MLP broadcast; drop '{MLP_SUFFIX}'")
    fallback = next((r.window for r in (reference.spatial, reference.temporal, reference.cross) if r), DEFAULT_WINDOW)
    if base in STEP_RANGES:
        return PABConfig(step=BroadcastRule(STEP_RANGES[base], fallback, order), name=name)
    rules = {}
    for kind, rng in zip(ATTENTION_KINDS, PYRAMIDS[base]):
        ref_rule = reference.rule_for(kind)
        rules[kind] = BroadcastRule(range=rng, window=ref_rule.window if ref_rule else fallback, forecast_order=order)
    return PABConfig(**rules, mlp=reference.mlp if with_mlp else None, name=name)
