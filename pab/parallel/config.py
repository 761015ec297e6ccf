"""How one generation is spread over processes: sequence-parallel degree, CFG degree, and the scheme per model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

STRATEGIES: tuple[str, ...] = ("auto", "dsp", "ulysses")
"""`auto` picks the adapter's scheme: DSP for spatial-temporal models (Latte), Ulysses for full 3D attention."""


class ParallelConfigError(ValueError):
    """A parallel setting, or a request shape under it, cannot work; the message names the field and the limit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ParallelConfig:
    r"""
    One model replica on `sp_degree * cfg_degree` processes (ranks `cfg_rank * sp_degree + sp_rank`).

    Args:
        sp_degree (`int`): Processes that share one forward by splitting its token sequence.
        cfg_degree (`int`): 1, or 2 to run the conditional and unconditional CFG passes on different processes.
        strategy (`str`): "auto", "dsp" (shard frames, all-to-all around temporal attention only) or "ulysses"
            (all-to-all q/k/v to heads and back inside every self-attention).
        timeout_s (`float`): Collective timeout of the groups built for this config: a rank that fails makes
            the others raise after at most this long instead of hanging.
    """

    sp_degree: int = 1
    cfg_degree: int = 1
    strategy: Literal["auto", "dsp", "ulysses"] = "auto"
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("sp_degree", "cfg_degree"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
                raise ParallelConfigError(f"{name} must be an integer in [1, 1024], got {value!r}", name)
        if self.cfg_degree not in (1, 2):
            raise ParallelConfigError(
                f"cfg_degree must be 1 or 2 (CFG has two passes), got {self.cfg_degree}", "cfg_degree"
            )
        if self.strategy not in STRATEGIES:
            raise ParallelConfigError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}", "strategy")
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 86_400:
            raise ParallelConfigError(f"timeout_s must be a number of seconds in (0, 86400], got {t!r}", "timeout_s")

    @property
    def world_size(self) -> int:
        return self.sp_degree * self.cfg_degree

    def resolve_strategy(self, model_strategy: str) -> str:
        """The scheme to use for a model whose adapter prefers `model_strategy` ("dsp" or "ulysses")."""
        if self.strategy != "auto":
            return self.strategy
        return model_strategy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ParallelConfig":
        allowed = {"sp_degree", "cfg_degree", "strategy", "timeout_s"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ParallelConfigError(f"unknown parallel field(s) {unknown}; allowed: {sorted(allowed)}", unknown[0])
        return cls(**data)
