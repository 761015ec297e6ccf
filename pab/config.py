"""What to broadcast and when: the rules of Pyramid Attention Broadcast as validated, serialisable data."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

ATTENTION_KINDS: tuple[str, ...] = ("spatial", "temporal", "cross")
"""The attention kinds PAB gives ranges to; `pab.adapters` says which module of a model is which."""

TIMESTEP_SCALE = 1000.0
"""Diffusion timesteps (and therefore windows) are on a 0..1000 scale, as in the paper."""


MAX_FORECAST_ORDER = 2
"""Highest extrapolation order a rule may ask for (`pab.forecast` fits a polynomial through order + 1 outputs)."""


class PABConfigError(ValueError):
    """A PAB setting is out of its allowed range; the message names the field and the limit."""


def _check_range(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PABConfigError(f"{field_name} must be an integer >= 1 (1 = always compute), got {value!r}")
    return value


def _check_order(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FORECAST_ORDER:
        raise PABConfigError(
            f"{field_name} must be 0 (reuse), 1 (linear) or 2 (quadratic forecast), got {value!r}"
        )
    return value


def _check_window(field_name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PABConfigError(f"{field_name} must be a pair [lo, hi] of timesteps, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not 0 <= lo < hi <= TIMESTEP_SCALE:
        raise PABConfigError(
            f"{field_name} must satisfy 0 <= lo < hi <= {TIMESTEP_SCALE:g} (timesteps, bounds exclusive), got {value!r}"
        )
    return (lo, hi)


@dataclass(frozen=True)
class BroadcastRule:
    r"""
    When one attention kind (or, as `PABConfig.step`, the whole transformer) skips its computation.

    Args:
        range (`int`):
            Compute once, then broadcast `range - 1` times. 1 means always compute.
        window (`tuple[float, float]`):
            Broadcast only while `window[0] < timestep < window[1]` (0..1000 scale, both bounds exclusive); outside it
            the module always computes.
        forecast_order (`int`, defaults to 0):
            What a broadcast returns: 0 the last computed output as it is (the paper); 1 or 2 a linear or quadratic
            extrapolation, in timestep units, through the last 2 or 3 computed outputs of the same module and CFG
            pass (`pab.forecast`). The schedule is the same for every order.
    """

    range: int = 2
    window: tuple[float, float] = (100.0, 800.0)
    forecast_order: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "range", _check_range("range", self.range))
        object.__setattr__(self, "window", _check_window("window", self.window))
        object.__setattr__(self, "forecast_order", _check_order("forecast_order", self.forecast_order))

    def in_window(self, timestep: float) -> bool:
        return self.window[0] < timestep < self.window[1]

    def broadcasts(self, counter: int, timestep: float) -> bool:
        """The paper's rule: reuse iff `counter % range != 0` and the timestep is inside the window."""
        return counter % self.range != 0 and self.in_window(timestep)


@dataclass(frozen=True)
class MLPBroadcastRule:
    r"""
    Reuse of feed-forward outputs in chosen blocks around chosen timesteps.

    Args:
        blocks (`tuple[int, ...]`):
            Block indices whose MLP outputs may be reused.
        timesteps (`tuple[float, ...]`):
            Anchor timesteps. The first step whose timestep is at or below an anchor computes and caches the MLP
            output; the following `range - 1` steps reuse it. Anchors are matched by crossing, so they work with any
            scheduler's timestep grid.
        range (`int`):
            Steps covered by one computed output (1 computes always).
    """

    blocks: tuple[int, ...] = ()
    timesteps: tuple[float, ...] = ()
    range: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "range", _check_range("mlp.range", self.range))
        blocks = tuple(self.blocks)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
            raise PABConfigError(f"mlp.blocks must be non-negative block indices, got {list(blocks)!r}")
        try:
            timesteps = tuple(sorted((float(t) for t in self.timesteps), reverse=True))
        except (TypeError, ValueError):
            raise PABConfigError(f"mlp.timesteps must be numbers, got {self.timesteps!r}") from None
        if any(not 0 <= t <= TIMESTEP_SCALE for t in timesteps):
            raise PABConfigError(f"mlp.timesteps must lie in [0, {TIMESTEP_SCALE:g}], got {list(timesteps)!r}")
        object.__setattr__(self, "blocks", tuple(sorted(set(blocks))))
        object.__setattr__(self, "timesteps", timesteps)


@dataclass(frozen=True)
class PABConfig:
    r"""
    Pyramid Attention Broadcast settings for one model.

    Args:
        spatial (`BroadcastRule`, *optional*):
            Rule for spatial self-attention (and the joint/full-3D attention of models without a temporal split).
        temporal (`BroadcastRule`, *optional*):
            Rule for temporal self-attention (spatial-temporal models such as Latte).
        cross (`BroadcastRule`, *optional*):
            Rule for text cross-attention.
        mlp (`MLPBroadcastRule`, *optional*):
            Optional MLP output reuse.
        name (`str`):
            A label for logs and metrics, e.g. the preset name.
        step (`BroadcastRule`, *optional*):
            Step-level broadcast: on the forwards it selects (counted per CFG pass, as for a module) the whole
            transformer output is reused or forecast and nothing inside runs. The per-kind rules apply on the
            forwards that do run.

    A kind whose rule is `None` always computes (its calls are still counted).
    """

    spatial: BroadcastRule | None = None
    temporal: BroadcastRule | None = None
    cross: BroadcastRule | None = None
    mlp: MLPBroadcastRule | None = None
    name: str = "custom"
    step: BroadcastRule | None = None

    def __post_init__(self) -> None:
        for kind in (*ATTENTION_KINDS, "step"):
            rule = getattr(self, kind)
            if rule is not None and not isinstance(rule, BroadcastRule):
                raise PABConfigError(f"{kind} must be a BroadcastRule or None, got {type(rule).__name__}")
        if self.mlp is not None and not isinstance(self.mlp, MLPBroadcastRule):
            raise PABConfigError(f"mlp must be an MLPBroadcastRule or None, got {type(self.mlp).__name__}")

    @classmethod
    def disabled(cls) -> "PABConfig":
        """Count every call, broadcast nothing: output is bit-identical to running without PAB."""
        return cls(name="none")

    @property
    def enabled(self) -> bool:
        rules = [getattr(self, k) for k in (*ATTENTION_KINDS, "step")]
        return any(r is not None and r.range > 1 for r in rules) or (
            self.mlp is not None and self.mlp.range > 1 and bool(self.mlp.blocks) and bool(self.mlp.timesteps)
        )

    def rule_for(self, kind: str) -> BroadcastRule | None:
        if kind not in ATTENTION_KINDS:
            raise PABConfigError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
        return getattr(self, kind)

    def replace(self, **changes: Any) -> "PABConfig":
        data = {k: getattr(self, k) for k in (*ATTENTION_KINDS, "mlp", "name", "step")}
        data.update(changes)
        return PABConfig(**data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for kind in (*ATTENTION_KINDS, "mlp", "step"):
            rule = getattr(self, kind)
            out[kind] = None if rule is None else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(rule).items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PABConfig":
        """Build from `to_dict()` output or user JSON; unknown keys are rejected so typos do not pass silently."""
        if not isinstance(data, Mapping):
            raise PABConfigError(f"a PAB config must be a mapping, got {type(data).__name__}")
        allowed = {*ATTENTION_KINDS, "mlp", "name", "step"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PABConfigError(f"unknown PAB config field(s) {unknown}; allowed: {sorted(allowed)}")
        kwargs: dict[str, Any] = {"name": str(data.get("name", "custom"))}
        for kind in (*ATTENTION_KINDS, "step"):
            kwargs[kind] = _rule_from(kind, data.get(kind), BroadcastRule, {"range", "window", "forecast_order"})
        kwargs["mlp"] = _rule_from("mlp", data.get("mlp"), MLPBroadcastRule, {"blocks", "timesteps", "range"})
        return cls(**kwargs)


def _rule_from(kind: str, value: Any, rule_cls: type, fields: set[str]) -> Any:
    if value is None or isinstance(value, rule_cls):
        return value
    if not isinstance(value, Mapping):
        raise PABConfigError(f"{kind} must be an object with fields {sorted(fields)} or null, got {value!r}")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise PABConfigError(f"unknown field(s) {unknown} in {kind}; allowed: {sorted(fields)}")
    try:
        return rule_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    except PABConfigError as exc:
        raise PABConfigError(f"{kind}.{exc}" if not str(exc).startswith(kind) else str(exc)) from None
